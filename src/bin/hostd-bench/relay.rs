//! `relay`: a `host.request` round trip against the same host spoken to
//! directly.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use dscode_hostd::protocol::names;
use serde_json::{Value, json};

use crate::bench::Opts;
use crate::daemon::{Conn, Daemon, fixtures};
use crate::floor::round_trips;
use crate::report::{Row, median, percentile, row};

fn frame(id: u64, kind: &str, payload: &Value) -> Vec<u8> {
    let body = json!({"id": format!("b{id}"), "type": kind, "payload": payload}).to_string();
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body.as_bytes());
    v
}

pub(crate) fn relay(o: &Opts) -> anyhow::Result<Vec<Row>> {
    let d = Daemon::start("heartbeat_interval_ms = 0\n")?;
    let mut c = Conn::open(&d.socket)?;
    c.call(
        names::HOST_START,
        json!({"extensionId":"bench.ipc","entry": fixtures().join("ipc-host.js"),"waitReady":true}),
    )?;
    let req = json!({"jsonrpc":"2.0","id":1,"method": names::HOST_REQUEST,"params":{"extensionId":"bench.ipc","type":"echo","payload":{"x":1}}}).to_string();
    // The same fixture's own socket, spoken to directly.
    let (host_sock, _) = dscode_hostd::ipc::ipc_paths(d.socket.parent().unwrap(), "bench.ipc");
    let mut direct = UnixStream::connect(&host_sock)?;
    let (mut ours, mut floor) = (vec![], vec![]);
    for _ in 0..o.repeats {
        let mut lat = Vec::new();
        let payload = json!({"x":1});
        for i in 0..5000 {
            let t = Instant::now();
            direct.write_all(&frame(i, "echo", &payload))?;
            let mut head = [0u8; 4];
            direct.read_exact(&mut head)?;
            let mut body = vec![0u8; u32::from_be_bytes(head) as usize];
            direct.read_exact(&mut body)?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        floor.push(percentile(&lat, 0.5));
        let lat = round_trips(&d.socket, &req, 5000)?;
        ours.push(percentile(&lat, 0.5));
    }
    let (v, f) = (median(ours), median(floor));
    Ok(vec![
        row("relay", "host.request echo round trip p50", v, "µs")
            .floor(f)
            .target("≤ 1.5× floor", v <= 1.5 * f)
            .note("floor: a direct length-prefixed round trip to the same host"),
    ])
}
