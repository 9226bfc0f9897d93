//! `exit-to-event` (a SIGKILL until a subscriber sees it) and `fanout` (one
//! feed to 100 subscribers, nothing lost or reordered).

use std::time::Instant;

use anyhow::{Context, bail};
use dscode_hostd::protocol::names;
use serde_json::{Value, json};

use crate::bench::Opts;
use crate::daemon::{Conn, Daemon, fixtures};
use crate::report::{Row, percentile, row};

pub(crate) fn exit_to_event(o: &Opts) -> anyhow::Result<Vec<Row>> {
    let (cfg, keep) = Daemon::light_config(
        "[restart]\nmax_attempts = 100000\nbackoff_ms = 0\nmax_backoff_ms = 0\n",
    );
    let script = keep.path().join("light-node.sh");
    let entry = fixtures().join("print-lines.js");
    let d = Daemon::start(&cfg)?;
    let mut sub = Conn::open(&d.socket)?;
    sub.call(names::HOST_SUBSCRIBE, json!({}))?;
    let mut c = Conn::open(&d.socket)?;
    let st = c.call(
        names::HOST_START,
        json!({"extensionId":"bench.k","entry":entry}),
    )?;
    let mut pid = st["pid"].as_i64().context("pid")? as i32;
    let kills = (200 * o.repeats / 3).max(200);
    let mut lat = Vec::new();
    for _ in 0..kills {
        let t0 = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let mut got_unhealthy = false;
        loop {
            let v: Value = serde_json::from_str(sub.read_line()?)?;
            let e = &v["params"]["result"];
            if !got_unhealthy && e["to"] == "unhealthy" {
                lat.push(t0.elapsed().as_secs_f64() * 1e6);
                got_unhealthy = true;
            }
            if got_unhealthy && e["to"] == "running" {
                pid = e["pid"].as_i64().context("pid")? as i32;
                break;
            }
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // Floor: tokio's Child::wait() wake-up after SIGKILL.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut floor = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..200 {
            let mut k = tokio::process::Command::new(&script).spawn()?;
            let p = k.id().unwrap() as i32;
            let t0 = Instant::now();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            )?;
            k.wait().await?;
            v.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        anyhow::Ok(v)
    })?;
    floor.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p99 = percentile(&lat, 0.99);
    Ok(vec![
        row(
            "exit-to-event",
            "SIGKILL → subscriber sees unhealthy, p50",
            percentile(&lat, 0.5),
            "µs",
        )
        .floor(percentile(&floor, 0.5))
        .note(format!(
            "{} kills; peers: supervisord ~1,002 ms, pm2 2.5 ms",
            lat.len()
        )),
        row("exit-to-event", "… p99", p99, "µs")
            .floor(percentile(&floor, 0.99))
            .target("p99 ≤ 2 ms", p99 <= 2000.0),
    ])
}

pub(crate) fn fanout(_o: &Opts) -> anyhow::Result<Vec<Row>> {
    // Spawn failures are the cheapest transitions (start -> crashed).
    let d = Daemon::start("node = \"/nonexistent/node\"\nmax_connections = 512\n")?;
    let entry = fixtures().join("print-lines.js");
    let subs: Vec<_> = (0..100)
        .map(|_| {
            let mut s = Conn::open(&d.socket)?;
            s.call(names::HOST_SUBSCRIBE, json!({}))?;
            anyhow::Ok(s)
        })
        .collect::<Result<_, _>>()?;
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || -> anyhow::Result<(Vec<u64>, Instant)> {
                let mut seqs = Vec::with_capacity(1000);
                while seqs.len() < 1000 {
                    let v: Value = serde_json::from_str(s.read_line()?)?;
                    let e = &v["params"]["result"];
                    if e["kind"] == "lagged" {
                        bail!("lagged");
                    }
                    if e["kind"] == "transition" {
                        seqs.push(e["seq"].as_u64().unwrap());
                    }
                }
                Ok((seqs, Instant::now()))
            })
        })
        .collect();
    let mut c = Conn::open(&d.socket)?;
    let t0 = Instant::now();
    for _ in 0..500 {
        let _ = c.call(
            names::HOST_START,
            json!({"extensionId":"fan","entry":entry}),
        );
    }
    let mut last = t0;
    let mut reference: Option<Vec<u64>> = None;
    let (mut lost, mut reordered) = (0, 0);
    for r in readers {
        let (seqs, at) = r.join().unwrap()?;
        last = last.max(at);
        if seqs.windows(2).any(|w| w[0] >= w[1]) {
            reordered += 1;
        }
        match &reference {
            None => reference = Some(seqs),
            Some(r) if *r != seqs => lost += 1,
            _ => {}
        }
    }
    let ms = (last - t0).as_secs_f64() * 1000.0;
    Ok(vec![
        row(
            "fanout",
            "100 subscribers × 1,000 transitions, time to last",
            ms,
            "ms",
        )
        .target("0 lost, 0 reordered", lost == 0 && reordered == 0)
        .note(format!(
            "{lost} subscribers differed, {reordered} reordered"
        )),
    ])
}
