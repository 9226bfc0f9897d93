//! `hostd-bench`: measure dscode-hostd against the floor of the same machine,
//! in the same run.
//!
//! ```text
//! cargo run --release --bin hostd-bench -- [SCENARIO…] [--json] [--repeats N] [--idle-secs S]
//! ```
//!
//! Scenarios: rpc-latency rpc-throughput spawn stop exit-to-event scale idle
//! fanout relay ready flood verify (default: all). Every scenario starts its own real
//! daemon (the `dscode-hostd` binary beside this one) on a temp socket. The
//! figure is the median over `--repeats` runs; the floor is measured the same
//! way in the same run.
//!
//! The daemons log at `error` to the bench's stderr; `HOSTD_BENCH_LOG=info`
//! (any `RUST_LOG` filter) shows their state changes, for profiling.
//! `HOSTD_BENCH_CONFIG` is appended to every daemon's config (for example
//! `HOSTD_BENCH_CONFIG=$'[sandbox]\ncgroup = "off"'`), to see what one
//! setting costs.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dscode_hostd::protocol::names;
use serde_json::{Value, json};

const ALL: &[&str] = &[
    "rpc-latency",
    "rpc-throughput",
    "spawn",
    "stop",
    "exit-to-event",
    "scale",
    "idle",
    "fanout",
    "relay",
    "ready",
    "flood",
    "verify",
];

/// One line of the report.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    scenario: String,
    metric: String,
    value: f64,
    unit: String,
    floor: Option<f64>,
    ratio: Option<f64>,
    target: String,
    pass: Option<bool>,
    note: String,
}

/// `--sandbox-off`: run the daemons with `[sandbox] profile = "off"`, to see
/// what the sandbox costs.
static SANDBOX_OFF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

struct Opts {
    scenarios: Vec<String>,
    json: bool,
    repeats: usize,
    idle_secs: u64,
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        scenarios: Vec::new(),
        json: false,
        repeats: 3,
        idle_secs: 30,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => o.json = true,
            "--sandbox-off" => SANDBOX_OFF.store(true, std::sync::atomic::Ordering::Relaxed),
            "--repeats" => o.repeats = args.next().context("--repeats N")?.parse()?,
            "--idle-secs" => o.idle_secs = args.next().context("--idle-secs S")?.parse()?,
            "--echo-server" => {
                echo_server(Path::new(&args.next().context("--echo-server PATH")?))?;
                std::process::exit(0);
            }
            "-h" | "--help" => {
                println!(
                    "usage: hostd-bench [SCENARIO…] [--json] [--repeats N] [--idle-secs S]\nscenarios: {}",
                    ALL.join(" ")
                );
                std::process::exit(0);
            }
            s if ALL.contains(&s) => o.scenarios.push(s.to_string()),
            s => bail!(
                "unknown scenario or option {s:?}; scenarios: {}",
                ALL.join(" ")
            ),
        }
    }
    if o.scenarios.is_empty() {
        o.scenarios = ALL.iter().map(|s| s.to_string()).collect();
    }
    Ok(o)
}

pub fn main() -> anyhow::Result<()> {
    let opts = parse_args()?;
    raise_nofile();
    let mut rows = Vec::new();
    for s in &opts.scenarios {
        eprintln!("== {s}");
        let r = match s.as_str() {
            "rpc-latency" => rpc_latency(&opts),
            "rpc-throughput" => rpc_throughput(&opts),
            "spawn" => spawn(&opts),
            "stop" => stop(&opts),
            "exit-to-event" => exit_to_event(&opts),
            "scale" => scale(&opts),
            "idle" => idle(&opts),
            "fanout" => fanout(&opts),
            "relay" => relay(&opts),
            "ready" => ready(&opts),
            "flood" => flood(&opts),
            "verify" => verify(&opts),
            _ => unreachable!(),
        };
        match r {
            Ok(mut v) => rows.append(&mut v),
            Err(e) => {
                eprintln!("{s} failed: {e:#}");
                rows.push(Row {
                    scenario: s.clone(),
                    metric: "error".into(),
                    value: f64::NAN,
                    unit: String::new(),
                    floor: None,
                    ratio: None,
                    target: String::new(),
                    pass: Some(false),
                    note: format!("{e:#}"),
                });
            }
        }
    }
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows);
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<15} {:<38} {:>12} {:>12} {:>7}  {:<22} {:<5} NOTE",
        "SCENARIO", "METRIC", "VALUE", "FLOOR", "RATIO", "TARGET", "PASS"
    );
    for r in rows {
        let f = |v: f64| {
            if v.is_nan() {
                "-".to_string()
            } else if v >= 1000.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        };
        println!(
            "{:<15} {:<38} {:>12} {:>12} {:>7}  {:<22} {:<5} {}",
            r.scenario,
            r.metric,
            format!("{} {}", f(r.value), r.unit),
            r.floor
                .map(|x| format!("{} {}", f(x), r.unit))
                .unwrap_or("-".into()),
            r.ratio.map(|x| format!("{x:.2}×")).unwrap_or("-".into()),
            r.target,
            match r.pass {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            },
            r.note
        );
    }
}

fn row(scenario: &str, metric: &str, value: f64, unit: &str) -> Row {
    Row {
        scenario: scenario.into(),
        metric: metric.into(),
        value,
        unit: unit.into(),
        floor: None,
        ratio: None,
        target: String::new(),
        pass: None,
        note: String::new(),
    }
}

impl Row {
    fn floor(mut self, floor: f64) -> Self {
        self.floor = Some(floor);
        self.ratio = Some(self.value / floor);
        self
    }
    fn target(mut self, target: &str, pass: bool) -> Self {
        self.target = target.into();
        self.pass = Some(pass);
        self
    }
    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

// ---------------------------------------------------------------- daemon

struct Daemon {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

impl Daemon {
    fn start(config: &str) -> anyhow::Result<Daemon> {
        Self::start_logging(config, None)
    }

    /// With `log` as its `RUST_LOG` (else `HOSTD_BENCH_LOG`, else `error`).
    fn start_logging(config: &str, log: Option<&str>) -> anyhow::Result<Daemon> {
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

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// A light host: a tiny shell script standing in for node, exec-ing sleep.
    fn light_config(extra: &str) -> (String, tempfile::TempDir) {
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
struct Conn {
    w: UnixStream,
    r: BufReader<UnixStream>,
    next: u64,
    line: String,
}

impl Conn {
    fn open(socket: &Path) -> anyhow::Result<Conn> {
        let s = UnixStream::connect(socket)?;
        Ok(Conn {
            r: BufReader::new(s.try_clone()?),
            w: s,
            next: 1,
            line: String::new(),
        })
    }

    fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        self.w.write_all(line.as_bytes())?;
        self.w.write_all(b"\n")?;
        Ok(())
    }

    fn read_line(&mut self) -> anyhow::Result<&str> {
        self.line.clear();
        if self.r.read_line(&mut self.line)? == 0 {
            bail!("connection closed");
        }
        Ok(self.line.trim_end())
    }

    fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
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

fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn cpu_ms(pid: i32) -> f64 {
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

// ---------------------------------------------------------------- floors

/// The floor for request/response: a line echo server, a separate process.
fn echo_server(path: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    for s in l.incoming() {
        let s = s?;
        std::thread::spawn(move || {
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if w.write_all(line.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

struct Echo {
    child: Child,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Echo {
    fn start() -> anyhow::Result<Echo> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("echo.sock");
        let child = Command::new(std::env::current_exe()?)
            .arg("--echo-server")
            .arg(&path)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while UnixStream::connect(&path).is_err() {
            if Instant::now() > deadline {
                bail!("echo server did not start");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(Echo {
            child,
            path,
            _dir: dir,
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sequential round trips of one request line; sorted latencies in µs.
fn round_trips(socket: &Path, line: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut c = Conn::open(socket)?;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.send_line(line)?;
        c.read_line()?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(lat)
}

// ---------------------------------------------------------------- scenarios

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

fn rpc_latency(o: &Opts) -> anyhow::Result<Vec<Row>> {
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

fn rpc_throughput(o: &Opts) -> anyhow::Result<Vec<Row>> {
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
fn start_many(
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

fn spawn(o: &Opts) -> anyhow::Result<Vec<Row>> {
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

fn stop(o: &Opts) -> anyhow::Result<Vec<Row>> {
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

fn exit_to_event(o: &Opts) -> anyhow::Result<Vec<Row>> {
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

fn scale(_o: &Opts) -> anyhow::Result<Vec<Row>> {
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

fn idle(o: &Opts) -> anyhow::Result<Vec<Row>> {
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

fn fanout(_o: &Opts) -> anyhow::Result<Vec<Row>> {
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

fn frame(id: u64, kind: &str, payload: &Value) -> Vec<u8> {
    let body = json!({"id": format!("b{id}"), "type": kind, "payload": payload}).to_string();
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body.as_bytes());
    v
}

fn relay(o: &Opts) -> anyhow::Result<Vec<Row>> {
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

fn ready(o: &Opts) -> anyhow::Result<Vec<Row>> {
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
fn flood(_o: &Opts) -> anyhow::Result<Vec<Row>> {
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

fn verify(o: &Opts) -> anyhow::Result<Vec<Row>> {
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
