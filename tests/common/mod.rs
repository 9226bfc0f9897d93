//! Test harness: a real `dscode-hostd` on a socket in a temp dir, a small
//! JSON-RPC line client, the node fixtures, and /proc scans for leftovers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// Every test body runs under this deadline.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Run a test body with [`TEST_TIMEOUT`].
pub async fn timed<F: std::future::Future<Output = ()>>(f: F) {
    if tokio::time::timeout(TEST_TIMEOUT, f).await.is_err() {
        panic!("test exceeded {TEST_TIMEOUT:?}");
    }
}

/// Fail loudly when node is missing: these tests never skip.
pub fn require_node() -> PathBuf {
    which::which("node").expect(
        "`node` is not on PATH: the integration tests run real Node.js extension hosts. \
         Install Node.js (see README) — these tests never skip silently.",
    )
}

pub fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    assert!(p.is_file(), "missing fixture {}", p.display());
    p.display().to_string()
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A marker unique to one daemon, put in every host's environment so
/// leftovers can be found in /proc.
pub fn new_marker() -> String {
    format!(
        "hostdtest-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Pids of live (non-zombie) processes whose environment holds `marker`.
pub fn marker_pids(marker: &str) -> Vec<i32> {
    let needle = format!("HOSTD_TEST_MARKER={marker}");
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if !process_alive(pid) {
            continue;
        }
        if let Ok(env) = std::fs::read(e.path().join("environ"))
            && env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let rest = &stat[stat.rfind(')').map(|i| i + 1).unwrap_or(0)..];
            !matches!(rest.split_whitespace().next(), Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// Poll `cond` until it holds or `within` passes. For facts with no event to
/// wait on (a process that is not our child disappearing from /proc).
pub async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn kill_marker_processes(marker: &str) {
    for pid in marker_pids(marker) {
        signal(pid, SIGKILL);
    }
}

/// Send `sig` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: i32, sig: i32) {
    let sig = nix::sys::signal::Signal::try_from(sig).unwrap();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
pub const SIGINT: i32 = 2;

/// Options for a test daemon.
#[derive(Default, Clone)]
pub struct DaemonOpts {
    /// Config file contents.
    pub config: Option<String>,
    /// Extra environment for the daemon; an empty value removes the
    /// variable.
    pub env: Vec<(String, String)>,
    /// Use this marker (from [`new_marker`]) instead of a fresh one.
    pub marker: Option<String>,
    /// Reuse this directory (for a second daemon on the same socket).
    pub dir: Option<PathBuf>,
    /// Open this file and let the daemon inherit it as fd 100 *without*
    /// close-on-exec, as a careless parent would.
    pub leak_fd: Option<PathBuf>,
}

/// The descriptor number [`DaemonOpts::leak_fd`] lands on.
pub const LEAKED_FD: i32 = 100;

/// A running `dscode-hostd`.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub marker: String,
    pub stderr: Arc<Mutex<Vec<String>>>,
    _tmp: Option<tempfile::TempDir>,
}

pub fn daemon_bin() -> &'static str {
    env!("CARGO_BIN_EXE_dscode-hostd")
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(DaemonOpts::default())
    }

    /// Start a daemon, without waiting for it.
    pub fn spawn(opts: DaemonOpts) -> Daemon {
        require_node();
        let (tmp, dir) = match opts.dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("hostd")
                    .tempdir_in("/tmp")
                    .unwrap();
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let run = dir.join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
        let socket = run.join("hostd.sock");
        let marker = opts.marker.clone().unwrap_or_else(new_marker);
        let mut cmd = Command::new(daemon_bin());
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("RUST_LOG", "info")
            // Hermetic: never read the developer's own config.
            .env("XDG_CONFIG_HOME", dir.join("xdg-config"))
            .env_remove("DSCODE_HOSTD_SOCKET")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Fixtures write their output into the test's directory: let the
        // sandbox allow that (unless the test configures the sandbox itself).
        let mut cfg = opts.config.clone().unwrap_or_default();
        if !cfg.contains("[sandbox]") {
            cfg.push_str(&format!(
                "\n[sandbox]\nwritable_paths = [\"{}\"]\n",
                dir.display()
            ));
        }
        let p = dir.join("config.toml");
        std::fs::write(&p, cfg).unwrap();
        // Config files must not be writable by others (the daemon checks),
        // whatever the umask this runs under.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        cmd.arg("--config").arg(p);
        for (k, v) in &opts.env {
            // An empty value removes the variable (e.g. the RUST_LOG above).
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let leaked = opts.leak_fd.as_ref().map(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap()
        });
        if let Some(f) = &leaked {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let fd = f.as_raw_fd();
            // SAFETY: one dup2(2) in the forked child; dup2 clears CLOEXEC on
            // the new descriptor, which is the point.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(fd, LEAKED_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn dscode-hostd");
        drop(leaked);
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[hostd] {line}");
                lines.lock().unwrap().push(line);
            }
        });
        Daemon {
            child: Some(child),
            dir,
            socket,
            marker,
            stderr,
            _tmp: tmp,
        }
    }

    /// Start a daemon and wait until it logs that it is listening.
    pub fn start_with(opts: DaemonOpts) -> Daemon {
        let d = Self::spawn(opts);
        d.wait_for_log("listening", Duration::from_secs(20));
        d
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Wait until a stderr line contains `needle` (or the daemon exits).
    pub fn wait_for_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return;
            }
            assert!(Instant::now() < deadline, "daemon never logged {needle:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket).await
    }

    /// Wait for the daemon to exit, at most `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn entry_env(&self) -> Value {
        json!({ "HOSTD_TEST_MARKER": self.marker })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child
            && c.try_wait().ok().flatten().is_none()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        kill_marker_processes(&self.marker);
    }
}

/// A JSON-RPC error as the client sees it.
#[derive(Debug, Clone)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Value,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A line-delimited JSON-RPC client that routes replies by id and collects
/// notifications.
pub struct Client {
    write: tokio::net::unix::OwnedWriteHalf,
    pending: Pending,
    next_id: u64,
    pub notifications: mpsc::UnboundedReceiver<Value>,
}

impl Client {
    pub async fn connect(socket: &Path) -> Client {
        let stream = UnixStream::connect(socket).await.expect("connect");
        let (read, write) = stream.into_split();
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let (ntx, nrx) = mpsc::unbounded_channel();
        let p = pending.clone();
        tokio::spawn(async move {
            let mut lines = TokioBufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("daemon wrote invalid JSON ({e}): {line}"));
                if let Some(id) = v.get("id").and_then(Value::as_u64)
                    && let Some(tx) = p.lock().unwrap().remove(&id)
                {
                    let _ = tx.send(v);
                    continue;
                }
                let _ = ntx.send(v);
            }
            // EOF: fail every pending call at once instead of at its timeout.
            p.lock().unwrap().clear();
        });
        Client {
            write,
            pending,
            next_id: 1,
            notifications: nrx,
        }
    }

    /// Call `method`; Ok(result) or Err(error).
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, RpcError> {
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let mut line = req.to_string();
        line.push('\n');
        self.write.write_all(line.as_bytes()).await.expect("write");
        let v = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("no reply to {method} within 30 s"))
            .expect("connection closed before the reply");
        match v.get("error") {
            Some(e) => Err(RpcError {
                code: e["code"].as_i64().unwrap(),
                message: e["message"].as_str().unwrap_or("").to_string(),
                data: e.get("data").cloned().unwrap_or(Value::Null),
            }),
            None => Ok(v["result"].clone()),
        }
    }

    pub async fn ok(&mut self, method: &str, params: Value) -> Value {
        match self.call(method, params.clone()).await {
            Ok(v) => v,
            Err(e) => panic!("{method} {params} failed: {e:?}"),
        }
    }

    pub async fn err(&mut self, method: &str, params: Value) -> RpcError {
        match self.call(method, params.clone()).await {
            Ok(v) => panic!("{method} {params} unexpectedly succeeded: {v}"),
            Err(e) => e,
        }
    }

    /// The next notification's `params.result`, within `within`.
    pub async fn next_event(&mut self, within: Duration) -> Value {
        let n = tokio::time::timeout(within, self.notifications.recv())
            .await
            .unwrap_or_else(|_| panic!("no notification within {within:?}"))
            .expect("connection closed");
        assert_eq!(n["method"], "host.stateChanged", "{n}");
        n["params"]["result"].clone()
    }

    /// Events until (and including) the first that satisfies `stop`.
    pub async fn events_until(
        &mut self,
        within: Duration,
        stop: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = self.next_event(left).await;
            let done = stop(&e);
            out.push(e);
            if done {
                return out;
            }
        }
    }
}

/// A raw connection for protocol tests: bytes in, lines out.
pub struct RawConn {
    pub stream: TokioBufReader<UnixStream>,
}

impl RawConn {
    pub async fn connect(socket: &Path) -> RawConn {
        RawConn {
            stream: TokioBufReader::new(UnixStream::connect(socket).await.expect("connect")),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.expect("write");
    }

    /// Write, tolerating a daemon that already closed the connection.
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.get_mut().write_all(bytes).await.is_ok()
    }

    /// The next line as JSON, within 10 s.
    pub async fn line(&mut self) -> Value {
        let mut s = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read_line(&mut s))
            .await
            .expect("no line within 10 s")
            .expect("read");
        assert!(n > 0, "connection closed");
        assert!(s.ends_with('\n'), "reply not newline-terminated: {s:?}");
        assert_eq!(s.matches('\n').count(), 1);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("invalid JSON {e}: {s}"))
    }

    /// Whether the daemon closed the connection (EOF) within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let mut s = String::new();
        matches!(
            tokio::time::timeout(within, self.stream.read_line(&mut s)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// `host.start` params for a fixture.
pub fn start_params(d: &Daemon, id: &str, fixture_name: &str, args: &[&str]) -> Value {
    json!({
        "extensionId": id,
        "entry": fixture(fixture_name),
        "args": args,
        "env": d.entry_env(),
    })
}

/// xorshift64*: a deterministic random source with no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Poll `host.logs` until a line contains `needle`; the lines so far.
pub async fn wait_for_output(c: &mut Client, id: &str, needle: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .ok("host.logs", json!({"extensionId": id, "lines": 10000}))
            .await;
        let lines = r["lines"].as_array().unwrap().clone();
        if lines
            .iter()
            .any(|l| l["text"].as_str().unwrap().contains(needle))
        {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "host {id} never printed {needle:?}: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait until host `id` prints a line `<prefix><number>`, and return the
/// number (the fixtures print their children's pids that way).
pub async fn output_pid(c: &mut Client, id: &str, prefix: &str) -> i32 {
    let lines = wait_for_output(c, id, prefix).await;
    lines
        .iter()
        .find_map(|l| {
            l["text"]
                .as_str()?
                .strip_prefix(prefix)?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{id} printed no `{prefix}<pid>` line: {lines:?}"))
}

/// Fail loudly unless the daemon has a writable cgroup2 subtree for hosts.
pub async fn require_cgroup2(c: &mut Client) {
    let info = c.ok("daemon.info", json!({})).await;
    assert!(
        info["sandbox"]["cgroup"]
            .as_str()
            .is_some_and(|p| p.starts_with('/')),
        "this test needs a writable cgroup2 subtree (CI runs as root); daemon.info says {}",
        info["sandbox"]
    );
}

/// One variable of a live process's environment.
pub fn host_env(pid: i32, key: &str) -> String {
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let prefix = format!("{key}=");
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| panic!("{pid} has no {key}"))
}

/// Wait until a fixture has written `path` (and a moment more for it to
/// finish the write), at most 10 s.
pub async fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} was never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// A fresh temp dir for a daemon that is run once to see it refuse to start.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hostd")
        .tempdir_in("/tmp")
        .unwrap()
}

/// Run `dscode-hostd --socket <dir>/run/hostd.sock --state-dir <dir>/state
/// [extra…]` to completion: its exit code and stderr.
pub fn run_daemon_once(dir: &Path, extra: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = Command::new(daemon_bin())
        .arg("--socket")
        .arg(dir.join("run/hostd.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(extra)
        .env("XDG_CONFIG_HOME", dir.join("xdg-config"))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}
