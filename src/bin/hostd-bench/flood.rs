//! `flood`: one host floods stdout; what the daemon writes and spends, and
//! how fast another client is answered meanwhile.

use std::path::Path;
use std::time::{Duration, Instant};

use dscode_hostd::protocol::names;
use serde_json::json;

use crate::bench::Opts;
use crate::daemon::{Conn, Daemon, cpu_ms, fixtures};
use crate::report::{Row, percentile, row};

/// Bytes of the daemon's log files under `dir`.
fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// One host floods stdout for 10 s: what the daemon writes, the CPU it
/// spends, and how fast another client is answered meanwhile.
pub(crate) fn flood(_o: &Opts) -> anyhow::Result<Vec<Row>> {
    let secs = 10u64;
    // Host lines are info: log them, as a daemon does by default.
    let d = Daemon::start_logging(
        "heartbeat_interval_ms = 0\nready_timeout_ms = 0\n",
        Some("info"),
    )?;
    let state = d.dir.path().join("state");
    let mut c = Conn::open(&d.socket)?;
    let (bytes0, cpu0) = (log_bytes(&state), cpu_ms(d.pid()));
    let t0 = Instant::now();
    c.call(
        names::HOST_START,
        json!({"extensionId":"bench.flood","entry": fixtures().join("flood.js"),"args":[(secs * 1000).to_string(), "100"]}),
    )?;
    let mut lat = Vec::new();
    let mut probe = Conn::open(&d.socket)?;
    while t0.elapsed() < Duration::from_secs(secs) {
        let t = Instant::now();
        probe.call(names::DAEMON_INFO, json!({}))?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(10));
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ms(d.pid()) - cpu0) / 1000.0 / wall;
    let written = log_bytes(&state).saturating_sub(bytes0) as f64 / (1 << 20) as f64;
    // The default budget: 1 MiB/s after a 2 s burst.
    let budget = (secs + 2) as f64;
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p99 = percentile(&lat, 0.99);
    Ok(vec![
        row(
            "flood",
            "log bytes written in a 10 s stdout flood",
            written,
            "MiB",
        )
        .target("≤ budget + 1 MiB", written <= budget + 1.0)
        .note(format!(
            "budget {budget} MiB (1 MiB/s, 2 s burst; 1,000 lines/s)"
        )),
        row("flood", "daemon CPU during the flood", cpu, "cores").target("≤ 0.5 core", cpu <= 0.5),
        row("flood", "daemon.info p99 for another client", p99, "ms")
            .target("≤ 5 ms", p99 <= 5.0)
            .note(format!("{} calls", lat.len())),
    ])
}
