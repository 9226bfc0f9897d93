//! `spawn` and `stop`: many hosts started or stopped at once, against plain
//! `tokio::process` spawns and kills; the fan-out helpers other scenarios
//! start their hosts with.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, bail};
use dscode_hostd::protocol::names;
use serde_json::{Value, json};

use crate::bench::Opts;
use crate::daemon::{Conn, Daemon, fixtures};
use crate::report::{Row, median, row};

/// Start `n` hosts at once over a few connections; ms until all are running.
/// Call `method` for hosts `<prefix>0..n`, pipelined over 8 connections at
/// once; ms until every reply has come back with `result.state == want`.
fn fan_out(
    socket: &Path,
    n: usize,
    method: &'static str,
    params: impl Fn(usize) -> Value + Send + Sync + 'static,
    want: &'static str,
) -> anyhow::Result<f64> {
    let conns = 8.min(n);
    let params = std::sync::Arc::new(params);
    let t0 = Instant::now();
    let handles: Vec<_> = (0..conns)
        .map(|k| {
            let socket = socket.to_path_buf();
            let params = params.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut c = Conn::open(&socket)?;
                let mine: Vec<usize> = (0..n).filter(|i| i % conns == k).collect();
                for i in &mine {
                    let req = json!({"jsonrpc":"2.0","id":i,"method":method,"params":params(*i)});
                    c.send_line(&req.to_string())?;
                }
                for _ in &mine {
                    let v: Value = serde_json::from_str(c.read_line()?)?;
                    if v["result"]["state"] != want {
                        bail!("{method} failed: {v}");
                    }
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap()?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

/// Start `n` hosts at once; ms until all are running.
pub(crate) fn start_many(
    socket: &Path,
    prefix: &str,
    n: usize,
    entry: &Path,
    env: Value,
) -> anyhow::Result<f64> {
    let (prefix, entry) = (prefix.to_string(), entry.to_path_buf());
    fan_out(
        socket,
        n,
        names::HOST_START,
        move |i| json!({"extensionId": format!("{prefix}{i}"), "entry": entry, "env": env}),
        "running",
    )
}

/// The floor: spawn the same programs with plain tokio::process.
fn plain_spawn(
    n: usize,
    program: &Path,
    args: &[&Path],
) -> anyhow::Result<(f64, Vec<tokio::process::Child>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let t0 = Instant::now();
        let mut kids = Vec::with_capacity(n);
        for _ in 0..n {
            kids.push(
                tokio::process::Command::new(program)
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0)
                    .spawn()?,
            );
        }
        Ok((t0.elapsed().as_secs_f64() * 1000.0, kids))
    })
}

fn kill_all(kids: Vec<tokio::process::Child>) -> anyhow::Result<f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let t0 = Instant::now();
        let mut kids = kids;
        for k in &mut kids {
            k.start_kill()?;
        }
        for k in &mut kids {
            k.wait().await?;
        }
        Ok(t0.elapsed().as_secs_f64() * 1000.0)
    })
}

pub(crate) fn spawn(o: &Opts) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let (cfg, keep) = Daemon::light_config("");
    let script = keep.path().join("light-node.sh");
    let entry = fixtures().join("print-lines.js");
    let (mut ours, mut floor) = (vec![], vec![]);
    for r in 0..o.repeats {
        let (f, kids) = plain_spawn(100, &script, &[&entry])?;
        floor.push(f);
        kill_all(kids)?;
        let d = Daemon::start(&cfg)?;
        ours.push(start_many(
            &d.socket,
            &format!("light{r}."),
            100,
            &entry,
            json!({}),
        )?);
    }
    let (v, f) = (median(ours), median(floor));
    rows.push(
        row("spawn", "host.start 100 light hosts → all running", v, "ms")
            .floor(f)
            .target("≤ 1.2× floor + 50 ms", v <= 1.2 * f + 50.0)
            .note("peers: supervisord 397 ms, pm2 762 ms"),
    );
    let node = which::which("node").context("node")?;
    let (mut ours, mut floor) = (vec![], vec![]);
    for r in 0..o.repeats {
        let (f, kids) = plain_spawn(10, &node, &[&entry])?;
        floor.push(f);
        kill_all(kids)?;
        let d = Daemon::start("ready_timeout_ms = 0\n")?;
        ours.push(start_many(
            &d.socket,
            &format!("node{r}."),
            10,
            &entry,
            json!({}),
        )?);
    }
    let (v, f) = (median(ours), median(floor));
    rows.push(
        row("spawn", "host.start 10 node hosts → all running", v, "ms")
            .floor(f)
            .target("≤ 1.2× floor + 5 ms", v <= 1.2 * f + 5.0)
            .note("peers: ~3.4 s for 100 node children"),
    );
    Ok(rows)
}

pub(crate) fn stop(o: &Opts) -> anyhow::Result<Vec<Row>> {
    let (cfg, keep) = Daemon::light_config("");
    let script = keep.path().join("light-node.sh");
    let entry = fixtures().join("print-lines.js");
    let (mut ours, mut floor) = (vec![], vec![]);
    for r in 0..o.repeats {
        let (_, kids) = plain_spawn(100, &script, &[&entry])?;
        floor.push(kill_all(kids)?);
        let d = Daemon::start(&cfg)?;
        let prefix = format!("s{r}.");
        start_many(&d.socket, &prefix, 100, &entry, json!({}))?;
        ours.push(fan_out(
            &d.socket,
            100,
            names::HOST_STOP,
            move |i| json!({"extensionId": format!("{prefix}{i}")}),
            "stopped",
        )?);
    }
    let (v, f) = (median(ours), median(floor));
    Ok(vec![
        row("stop", "host.stop 100 light hosts → all stopped", v, "ms")
            .floor(f)
            .target("≤ 1.2× floor", v <= 1.2 * f)
            .note("peers: supervisord 41 ms, pm2 6,017 ms"),
    ])
}
