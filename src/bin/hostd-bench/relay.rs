//! `relay`: a `host.request` round trip against the same host reached
//! through a bare two-hop forwarder (the floor), and spoken to directly.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use dscode_hostd::protocol::names;
use serde_json::{Value, json};

use crate::bench::Opts;
use crate::daemon::{Conn, Daemon, fixtures};
use crate::floor::round_trips;
use crate::forward::Forwarder;
use crate::report::{Row, median, percentile, row};

fn frame(id: u64, kind: &str, payload: &Value) -> Vec<u8> {
    let body = json!({"id": format!("b{id}"), "type": kind, "payload": payload}).to_string();
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body.as_bytes());
    v
}

/// Sequential framed `echo` round trips over `s`; sorted latencies in µs.
fn framed_round_trips(s: &mut UnixStream, n: u64) -> anyhow::Result<Vec<f64>> {
    let payload = json!({"x":1});
    let mut lat = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        s.write_all(&frame(i, "echo", &payload))?;
        let mut head = [0u8; 4];
        s.read_exact(&mut head)?;
        let mut body = vec![0u8; u32::from_be_bytes(head) as usize];
        s.read_exact(&mut body)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(lat)
}

pub(crate) fn relay(o: &Opts) -> anyhow::Result<Vec<Row>> {
    let d = Daemon::start("heartbeat_interval_ms = 0\n")?;
    let mut c = Conn::open(&d.socket)?;
    c.call(
        names::HOST_START,
        json!({"extensionId":"bench.ipc","entry": fixtures().join("ipc-host.js"),"waitReady":true}),
    )?;
    let req = json!({"jsonrpc":"2.0","id":1,"method": names::HOST_REQUEST,"params":{"extensionId":"bench.ipc","type":"echo","payload":{"x":1}}}).to_string();
    // The same fixture's own socket, spoken to directly (one hop) and
    // through a bare forwarder process (two hops, as through the daemon).
    let (host_sock, _) = dscode_hostd::ipc::ipc_paths(d.socket.parent().unwrap(), "bench.ipc");
    let mut direct = UnixStream::connect(&host_sock)?;
    let fwd = Forwarder::start(&host_sock)?;
    let mut two_hop = UnixStream::connect(&fwd.path)?;
    let (mut ours, mut one, mut two) = (vec![], vec![], vec![]);
    for _ in 0..o.repeats {
        one.push(percentile(&framed_round_trips(&mut direct, 5000)?, 0.5));
        two.push(percentile(&framed_round_trips(&mut two_hop, 5000)?, 0.5));
        ours.push(percentile(&round_trips(&d.socket, &req, 5000)?, 0.5));
    }
    let (v, f1, f2) = (median(ours), median(one), median(two));
    Ok(vec![
        row("relay", "host.request echo round trip p50", v, "µs")
            .floor(f2)
            .target("≤ 1.2× floor", v <= 1.2 * f2)
            .note("floor: the same request through a bare two-hop tokio forwarder process"),
        row(
            "relay",
            "direct round trip to the host p50 (one hop)",
            f1,
            "µs",
        )
        .floor(f1)
        .note("the host alone: what neither relay can beat"),
    ])
}
