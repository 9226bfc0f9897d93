//! A real `dscode-hostd` (the binary beside this one) on a temporary socket,
//! a raw line-delimited connection to it, and what `/proc` says it uses.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dscode_hostd::protocol::names;
use serde_json::{Value, json};

/// `--sandbox-off`: run the daemons with `[sandbox] profile = "off"`, to see
/// what the sandbox costs.
pub(crate) static SANDBOX_OFF: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub(crate) struct Daemon {
    child: Child,
    pub(crate) socket: PathBuf,
    pub(crate) dir: tempfile::TempDir,
}

fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

pub(crate) fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

impl Daemon {
    pub(crate) fn start(config: &str) -> anyhow::Result<Daemon> {
        Self::start_logging(config, None)
    }

    /// With `log` as its `RUST_LOG` (else `HOSTD_BENCH_LOG`, else `error`).
    pub(crate) fn start_logging(config: &str, log: Option<&str>) -> anyhow::Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix("hostd-bench")
            .tempdir_in("/tmp")?;
        let run = dir.path().join("run");
        std::fs::create_dir(&run)?;
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700))?;
        let socket = run.join("hostd.sock");
        let cfg = dir.path().join("config.toml");
        let mut config = config.to_string();
        if SANDBOX_OFF.load(std::sync::atomic::Ordering::Relaxed) {
            config.push_str("\n[sandbox]\nprofile = \"off\"\ncgroup = \"off\"\n");
        } else if let Ok(extra) = std::env::var("HOSTD_BENCH_CONFIG") {
            config.push('\n');
            config.push_str(&extra);
        }
        std::fs::write(&cfg, config)?;
        let exe = bin_dir().join("dscode-hostd");
        let child = Command::new(&exe)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--config")
            .arg(&cfg)
            .env(
                "RUST_LOG",
                log.map(String::from).unwrap_or_else(|| {
                    std::env::var("HOSTD_BENCH_LOG").unwrap_or_else(|_| "error".into())
                }),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!("starting {} (build it with --release first)", exe.display())
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            if Instant::now() > deadline {
                bail!("daemon did not listen on {}", socket.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Daemon { child, socket, dir })
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// A light host: a tiny shell script standing in for node, exec-ing sleep.
    pub(crate) fn light_config(extra: &str) -> (String, tempfile::TempDir) {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("light-node.sh");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 100000\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        (
            format!(
                "node = \"{}\"\nready_timeout_ms = 0\nheartbeat_interval_ms = 0\nmax_connections = 512\n{extra}",
                script.display()
            ),
            d,
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(mut c) = Conn::open(&self.socket) {
            let _ = c.call(names::DAEMON_SHUTDOWN, json!({}));
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

/// A raw line-delimited JSON-RPC connection: the thinnest possible client.
pub(crate) struct Conn {
    w: UnixStream,
    r: BufReader<UnixStream>,
    next: u64,
    line: String,
}

impl Conn {
    pub(crate) fn open(socket: &Path) -> anyhow::Result<Conn> {
        let s = UnixStream::connect(socket)?;
        Ok(Conn {
            r: BufReader::new(s.try_clone()?),
            w: s,
            next: 1,
            line: String::new(),
        })
    }

    pub(crate) fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        self.w.write_all(line.as_bytes())?;
        self.w.write_all(b"\n")?;
        Ok(())
    }

    pub(crate) fn read_line(&mut self) -> anyhow::Result<&str> {
        self.line.clear();
        if self.r.read_line(&mut self.line)? == 0 {
            bail!("connection closed");
        }
        Ok(self.line.trim_end())
    }

    pub(crate) fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next;
        self.next += 1;
        self.send_line(
            &json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}).to_string(),
        )?;
        loop {
            let v: Value = serde_json::from_str(self.read_line()?)?;
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    bail!("{method}: {e}");
                }
                return Ok(v["result"].clone());
            }
        }
    }
}

pub(crate) fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn cpu_ms(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = &stat[stat.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks * 1000.0 / hz
}
