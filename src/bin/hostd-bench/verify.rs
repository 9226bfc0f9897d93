//! `verify`: what a sha256-verified Node costs a start (cached) against
//! verification off.

use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use dscode_hostd::protocol::names;
use serde_json::json;

use crate::bench::Opts;
use crate::daemon::{Conn, Daemon, fixtures};
use crate::report::{Row, median, row};

/// Median `host.start` latency of a node host (until spawned), over `n`
/// start/stop cycles.
fn start_latency(d: &Daemon, n: usize) -> anyhow::Result<f64> {
    let mut c = Conn::open(&d.socket)?;
    let entry = fixtures().join("print-lines.js");
    let mut lat = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        c.call(
            names::HOST_START,
            json!({"extensionId":"bench.v","entry":entry}),
        )?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        c.call(names::HOST_STOP, json!({"extensionId":"bench.v"}))?;
    }
    Ok(median(lat))
}

pub(crate) fn verify(o: &Opts) -> anyhow::Result<Vec<Row>> {
    let node = which::which("node").context("node")?;
    let out = Command::new("sha256sum").arg(&node).output()?;
    let sha = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .context("sha256sum")?
        .to_string();
    let on = Daemon::start(&format!(
        "ready_timeout_ms = 0\n[node]\npath = \"{}\"\nsha256 = [\"{sha}\"]\nverify = \"required\"\n",
        node.display()
    ))?;
    let off = Daemon::start(&format!(
        "ready_timeout_ms = 0\n[node]\npath = \"{}\"\nverify = \"off\"\n",
        node.display()
    ))?;
    // The first verified start hashes the binary; later ones use the cache.
    let t = Instant::now();
    start_latency(&on, 1)?;
    let first = t.elapsed().as_secs_f64() * 1000.0;
    let (mut v_on, mut v_off) = (vec![], vec![]);
    for _ in 0..o.repeats {
        v_off.push(start_latency(&off, 20)?);
        v_on.push(start_latency(&on, 20)?);
    }
    let (v, f) = (median(v_on), median(v_off));
    Ok(vec![
        row(
            "verify",
            "host.start latency, sha256 verified (cached)",
            v,
            "ms",
        )
        .floor(f)
        .target("≤ 1.1× unverified", v <= 1.1 * f)
        .note(format!(
            "floor: verification off; first (uncached) start incl. hashing {first:.1} ms"
        )),
    ])
}
