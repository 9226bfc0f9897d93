//! `scale` (memory and `host.list` with 1,000 hosts) and `idle` (what 100
//! idle hosts cost the daemon).

use std::time::{Duration, Instant};

use anyhow::bail;
use dscode_hostd::protocol::names;
use serde_json::{Value, json};

use crate::bench::Opts;
use crate::daemon::{Conn, Daemon, cpu_ms, fixtures, rss_kib};
use crate::report::{Row, percentile, row};
use crate::spawn::start_many;

pub(crate) fn scale(_o: &Opts) -> anyhow::Result<Vec<Row>> {
    let (cfg, _keep) = Daemon::light_config("max_requests_per_connection = 1024\n");
    let entry = fixtures().join("print-lines.js");
    let d = Daemon::start(&cfg)?;
    let mut c = Conn::open(&d.socket)?;
    // Warm up the runtime and allocator with one host, then measure.
    c.call(
        names::HOST_START,
        json!({"extensionId":"warm","entry":entry}),
    )?;
    c.call(names::HOST_STOP, json!({"extensionId":"warm"}))?;
    let before = rss_kib(d.pid());
    start_many(&d.socket, "scale.", 1000, &entry, json!({}))?;
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(d.pid());
    let per_host = (after.saturating_sub(before)) as f64 / 1000.0;
    let mut lat = Vec::new();
    let list_req =
        json!({"jsonrpc":"2.0","id":"list","method": names::HOST_LIST,"params":{}}).to_string();
    for _ in 0..50 {
        // Timed: the request and the whole reply line (~0.5 MB), not the
        // bench's own parse of it.
        let t = Instant::now();
        c.send_line(&list_req)?;
        let line = c.read_line()?.to_string();
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        let r: Value = serde_json::from_str(&line)?;
        if r["result"]["hosts"].as_array().map(Vec::len) != Some(1001) {
            bail!(
                "host.list did not list 1001 hosts: {}",
                &line[..line.len().min(200)]
            );
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let list = percentile(&lat, 0.5);
    Ok(vec![
        row(
            "scale",
            "daemon RSS with 1,000 hosts",
            after as f64 / 1024.0,
            "MiB",
        )
        .note(format!("{:.1} MiB before", before as f64 / 1024.0)),
        row("scale", "RSS per host", per_host, "KiB").target("≤ 40 KiB", per_host <= 40.0),
        row("scale", "host.list p50 with 1,000 hosts", list, "ms").target("≤ 10 ms", list <= 10.0),
    ])
}

pub(crate) fn idle(o: &Opts) -> anyhow::Result<Vec<Row>> {
    let (cfg, _keep) = Daemon::light_config("");
    let entry = fixtures().join("print-lines.js");
    let d = Daemon::start(&cfg)?;
    start_many(&d.socket, "idle.", 100, &entry, json!({}))?;
    // Let the stable-budget timers (5 s) fire before measuring.
    std::thread::sleep(Duration::from_secs(6));
    let c0 = cpu_ms(d.pid());
    std::thread::sleep(Duration::from_secs(o.idle_secs));
    let used = cpu_ms(d.pid()) - c0;
    let rss = rss_kib(d.pid()) as f64 / 1024.0;
    Ok(vec![
        row(
            "idle",
            &format!("daemon CPU over {} s idle, 100 hosts", o.idle_secs),
            used,
            "ms",
        )
        .target("≤ 5 ms", used <= 5.0)
        .note("peers: supervisord 30 ms, pm2 60 ms"),
        row("idle", "daemon RSS, 100 hosts", rss, "MiB")
            .note("peers: supervisord 27 MiB, pm2 61 MiB"),
    ])
}
