//! `ready`: `host.start` until the real-host fixture is ready, against the
//! same script spawned bare with a raw backend.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dscode_hostd::protocol::names;
use serde_json::{Value, json};

use crate::bench::Opts;
use crate::daemon::{Conn, Daemon, fixtures};
use crate::report::{Row, percentile, row};

/// An extensions directory with one extension, for the real-behaviour host.
fn extensions_dir() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let ext = dir.path().join("bench.one-1.0.0");
    std::fs::create_dir_all(&ext)?;
    std::fs::write(
        ext.join("package.json"),
        r#"{"name":"one","publisher":"bench","version":"1.0.0"}"#,
    )?;
    Ok(dir)
}

/// The floor of one ready handshake: `node real-host.js` spawned bare, with a
/// backend in this process that binds the incoming socket first, connects to
/// the host's socket as soon as it accepts (1 ms retries), and answers
/// `extension-host-ready`. Milliseconds from spawn to both halves done.
fn bare_ready(node: &Path, entry: &Path, dir: &Path) -> anyhow::Result<f64> {
    let host = dir.join("host.sock");
    let incoming = dir.join("daemon.sock");
    let _ = std::fs::remove_file(&host);
    let _ = std::fs::remove_file(&incoming);
    let listener = UnixListener::bind(&incoming)?;
    let t = Instant::now();
    // The environment a host gets from the daemon's allowlist: inheriting
    // the bench's whole one would make the floor pay for, say,
    // NODE_EXTRA_CA_CERTS (+50 ms of CA loading per start here).
    let keep = dscode_hostd::supervisor::allowed_env(std::env::vars_os(), &[]);
    let mut child = Command::new(node)
        .arg(entry)
        .env_clear()
        .envs(keep)
        .env("DSCODE_IPC_URL", format!("ipc://{}", host.display()))
        .env(
            "DSCODE_INCOMING_IPC_URL",
            format!("ipc://{}", incoming.display()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let out = loop {
        match UnixStream::connect(&host) {
            Ok(s) => break s,
            Err(_) if t.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => bail!("the bare host never listened: {e}"),
        }
    };
    let (mut inc, _) = listener.accept()?;
    let mut head = [0u8; 4];
    inc.read_exact(&mut head)?;
    let mut body = vec![0u8; u32::from_be_bytes(head) as usize];
    inc.read_exact(&mut body)?;
    let msg: Value = serde_json::from_slice(&body)?;
    anyhow::ensure!(msg["type"] == "extension-host-ready", "{msg}");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let reply = json!({"id": msg["id"], "type": "extension-host-ready-response", "payload": {"success": true}}).to_string();
    inc.write_all(&(reply.len() as u32).to_be_bytes())?;
    inc.write_all(reply.as_bytes())?;
    let _ = child.kill();
    let _ = child.wait();
    drop(out);
    Ok(ms)
}

pub(crate) fn ready(o: &Opts) -> anyhow::Result<Vec<Row>> {
    let n = 50;
    let node = which::which("node").context("node")?;
    let entry = fixtures().join("real-host.js");
    let exts = extensions_dir()?;
    let d = Daemon::start(
        "heartbeat_interval_ms = 0
",
    )?;
    let mut c = Conn::open(&d.socket)?;
    let scratch = tempfile::tempdir()?;
    let (mut ours, mut floor) = (vec![], vec![]);
    for _ in 0..o.repeats {
        for _ in 0..n {
            floor.push(bare_ready(&node, &entry, scratch.path())?);
            let t = Instant::now();
            let st = c.call(
                names::HOST_START,
                json!({"extensionId":"main","entry": entry,"extensionsDir": exts.path(),"waitReady":true}),
            )?;
            ours.push(t.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(st["ready"] == true, "{st}");
            c.call(names::HOST_STOP, json!({"extensionId":"main"}))?;
        }
    }
    ours.sort_by(|a, b| a.partial_cmp(b).unwrap());
    floor.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, f50) = (percentile(&ours, 0.5), percentile(&floor, 0.5));
    let (p99, f99) = (percentile(&ours, 0.99), percentile(&floor, 0.99));
    Ok(vec![
        row(
            "ready",
            "host.start → ready, real-host fixture p50",
            p50,
            "ms",
        )
        .floor(f50)
        .target("≤ 1.2× floor + 3 ms", p50 <= 1.2 * f50 + 3.0)
        .note("floor: the same script spawned bare, its socket connected to by a raw backend"),
        row(
            "ready",
            "host.start → ready, real-host fixture p99",
            p99,
            "ms",
        )
        .floor(f99)
        .note(format!("{} starts of each, interleaved", ours.len())),
    ])
}
