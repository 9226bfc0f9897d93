//! `rpc-latency` and `rpc-throughput`: `host.status` against the echo floor.

use std::path::Path;
use std::time::{Duration, Instant};

use dscode_hostd::protocol::names;
use serde_json::json;

use crate::bench::Opts;
use crate::daemon::{Conn, Daemon, fixtures};
use crate::floor::{Echo, round_trips};
use crate::report::{Row, median, percentile, row};

/// A daemon with one host, the echo floor, and the `host.status` request
/// both are measured with.
struct StatusBench {
    daemon: Daemon,
    echo: Echo,
    _light: tempfile::TempDir,
}

/// The `host.status` request line both RPC benchmarks send.
fn status_req() -> String {
    json!({"jsonrpc":"2.0","id":1,"method": names::HOST_STATUS,"params":{"extensionId":"bench.a"}})
        .to_string()
}

impl StatusBench {
    fn start() -> anyhow::Result<StatusBench> {
        let (cfg, light) = Daemon::light_config("");
        let daemon = Daemon::start(&cfg)?;
        Conn::open(&daemon.socket)?.call(
            names::HOST_START,
            json!({"extensionId":"bench.a","entry": fixtures().join("print-lines.js")}),
        )?;
        Ok(StatusBench {
            daemon,
            echo: Echo::start()?,
            _light: light,
        })
    }
}

pub(crate) fn rpc_latency(o: &Opts) -> anyhow::Result<Vec<Row>> {
    let StatusBench {
        daemon: d, echo, ..
    } = &StatusBench::start()?;
    let req = &status_req();
    let (mut p50, mut p99, mut f50, mut f99) = (vec![], vec![], vec![], vec![]);
    for _ in 0..o.repeats {
        let lat = round_trips(&echo.path, req, 20_000)?;
        f50.push(percentile(&lat, 0.5));
        f99.push(percentile(&lat, 0.99));
        let lat = round_trips(&d.socket, req, 20_000)?;
        p50.push(percentile(&lat, 0.5));
        p99.push(percentile(&lat, 0.99));
    }
    let (p50, f50) = (median(p50), median(f50));
    Ok(vec![
        row(
            "rpc-latency",
            "host.status p50 (20,000 sequential)",
            p50,
            "µs",
        )
        .floor(f50)
        .target("p50 ≤ 1.3× floor", p50 <= 1.3 * f50)
        .note("peers: supervisord 533 µs, pm2 1,384 µs"),
        row("rpc-latency", "host.status p99", median(p99), "µs").floor(median(f99)),
    ])
}

fn throughput(socket: &Path, clients: usize, dur: Duration, line: &str) -> anyhow::Result<f64> {
    let stop = Instant::now() + dur;
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let socket = socket.to_path_buf();
            let line = line.to_string();
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut c = Conn::open(&socket)?;
                let mut n = 0;
                while Instant::now() < stop {
                    c.send_line(&line)?;
                    c.read_line()?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().unwrap()?;
    }
    Ok(total as f64 / dur.as_secs_f64())
}

pub(crate) fn rpc_throughput(o: &Opts) -> anyhow::Result<Vec<Row>> {
    let StatusBench {
        daemon: d, echo, ..
    } = &StatusBench::start()?;
    let req = &status_req();
    let (mut ours, mut floor) = (vec![], vec![]);
    for _ in 0..o.repeats {
        floor.push(throughput(&echo.path, 8, Duration::from_secs(2), req)?);
        ours.push(throughput(&d.socket, 8, Duration::from_secs(2), req)?);
    }
    let (v, f) = (median(ours), median(floor));
    Ok(vec![
        row("rpc-throughput", "host.status calls/s, 8 clients", v, "/s")
            .floor(f)
            .target("≥ 0.5× floor", v >= 0.5 * f),
    ])
}
