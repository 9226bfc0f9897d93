//! `dscode-hostctl`: the command-line client of dscode-hostd.
//!
//! Exit codes: 0 success (also when stdout is closed early, as by `| head`),
//! 1 the daemon returned an error, 2 usage error, 3 no usable connection:
//! cannot connect, refused to connect (the socket is not private), no reply
//! within `--timeout`, the daemon went away or sent an over-long line.
//!
//! Everything printed for a person is escaped (see [`esc`]): a host cannot
//! drive the operator's terminal with escape sequences. `--json` is exact
//! JSON and `logs --raw` prints the host's lines as they are.

use std::borrow::Cow;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dscode_hostd::client::{
    Client, ClientError, ClientOptions, GroupUsage, HostOptions, HostStatus, StartParams,
    StateEvent,
};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Control dscode-hostd, the DSCode extension-host supervisor.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Example: dscode-hostctl start acme.hello ~/ext/hello/main.js --env LOG=1 -- --verbose"
)]
struct Args {
    /// Control socket [default: $DSCODE_HOSTD_SOCKET, else
    /// $XDG_RUNTIME_DIR/dscode-hostd/hostd.sock, else
    /// ${XDG_STATE_HOME:-~/.local/state}/dscode-hostd/run/hostd.sock; without a
    /// home directory /tmp/dscode-hostd-<uid>/hostd.sock: the same default as
    /// dscode-hostd]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print raw JSON results (NDJSON for `watch` and `logs -f`).
    #[arg(long, global = true)]
    json: bool,
    /// How long to wait to connect, and for each reply beyond the wait a
    /// call asks for (a stop's timeout, a request's); `watch` and `logs -f`
    /// stream without one. Give it before the subcommand (`stop --timeout`
    /// is the stop's own, in ms).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show the daemon's version, pid, uptime and host counts.
    #[command(after_help = "Example: dscode-hostctl info")]
    Info,
    /// List every host as a table.
    #[command(after_help = "Example: dscode-hostctl list --json | jq '.hosts[].state'")]
    List,
    /// Show one host in detail, or every host.
    #[command(after_help = "Example: dscode-hostctl status acme.hello")]
    Status { extension_id: Option<String> },
    /// Register (if new) and start a host: `node ENTRY [ARGS…]`.
    #[command(
        after_help = "Example: dscode-hostctl start acme.hello ./main.js --env LOG=1 -- --port 0"
    )]
    Start {
        extension_id: String,
        /// The host's entry script (made absolute).
        entry: PathBuf,
        /// Extra environment variable, KEY=VALUE; repeatable.
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_kv)]
        env: Vec<(String, String)>,
        /// This host's memory limit in MiB [default: sandbox.memory_max_mb].
        #[arg(long, value_name = "MIB")]
        memory_max_mb: Option<u64>,
        /// This host's CPU limit, percent of one CPU [default:
        /// sandbox.cpu_max_percent].
        #[arg(long, value_name = "PERCENT")]
        cpu_max_percent: Option<u32>,
        /// Arguments after `--` go to the entry script.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Stop a host: SIGTERM to its process group, SIGKILL after the timeout.
    #[command(after_help = "Example: dscode-hostctl stop acme.hello --timeout 2000")]
    Stop {
        extension_id: String,
        /// Milliseconds before SIGKILL [default: the host's stop timeout].
        #[arg(long, value_name = "MS")]
        timeout: Option<u64>,
    },
    /// Stop (if running) and start a host with a fresh restart budget.
    #[command(after_help = "Example: dscode-hostctl restart acme.hello")]
    Restart { extension_id: String },
    /// Forget a stopped or crashed host.
    #[command(after_help = "Example: dscode-hostctl remove acme.hello")]
    Remove { extension_id: String },
    /// Print a host's output; with -f, keep following it until Ctrl-C.
    #[command(after_help = "Example: dscode-hostctl logs acme.hello -n 50 -f")]
    Logs {
        extension_id: String,
        /// How many of the newest lines to print first.
        #[arg(short = 'n', long = "lines", default_value_t = 100)]
        lines: usize,
        /// Follow new lines until Ctrl-C.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Print the host's lines as they are, escape sequences and all (for
        /// piping); by default control characters are shown as `\xNN`.
        #[arg(long)]
        raw: bool,
    },
    /// Stream state changes (all hosts, or the ones named) until Ctrl-C.
    #[command(after_help = "Example: dscode-hostctl watch acme.hello --json")]
    Watch { extension_ids: Vec<String> },
    /// Stop every host and the daemon.
    #[command(after_help = "Example: dscode-hostctl shutdown")]
    Shutdown,
    /// Re-read the daemon's config file (running hosts are kept).
    #[command(after_help = "Example: dscode-hostctl reload")]
    Reload,
    /// Call any method with raw JSON params and print the result.
    #[command(
        after_help = "Example: dscode-hostctl call host.status '{\"extensionId\":\"acme.hello\"}'"
    )]
    Call {
        method: String,
        /// Params as JSON [default: {}].
        params: Option<String>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 2m)"))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// How a command failed, and so which exit code it gets.
enum Failure {
    /// The daemon answered with an error (exit 1), or the connection is
    /// unusable (exit 3): see [`ClientError::is_connection`].
    Client(ClientError),
    Usage(String),
    /// The reader of stdout went away (`| head`): stop quietly.
    StdoutClosed,
    /// Anything else (the runtime, writing stdout): exit 1.
    Other(anyhow::Error),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

impl From<std::io::Error> for Failure {
    /// A failed write to stdout.
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::StdoutClosed
        } else {
            Failure::Other(anyhow::Error::new(e).context("writing to stdout"))
        }
    }
}

/// `println!` that returns a write error (a closed pipe) instead of
/// panicking on it.
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(Failure::from)
    };
}

/// One line on stderr, escaped; a closed stderr is ignored.
fn complain(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "dscode-hostctl: {}", esc(msg));
}

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .map_err(Failure::Other)
        .and_then(|runtime| runtime.block_on(run(args)))
        .and_then(|()| std::io::stdout().flush().map_err(Failure::from));
    match outcome {
        Ok(()) | Err(Failure::StdoutClosed) => ExitCode::SUCCESS,
        Err(Failure::Client(e)) => {
            complain(&e.to_string());
            ExitCode::from(if e.is_connection() { 3 } else { 1 })
        }
        Err(Failure::Usage(msg)) => {
            complain(&msg);
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            complain(&format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let socket = dscode_hostd::paths::resolve_socket(args.socket.as_deref(), None);
    let json_out = args.json;
    let options = ClientOptions {
        connect_timeout: args.timeout,
        reply_timeout: args.timeout,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&socket, options).await?;
    match args.command {
        Cmd::Info => {
            let info = client.info().json().await?;
            if json_out {
                outln!("{info}")?;
            } else {
                print_info(&info)?;
            }
        }
        Cmd::List | Cmd::Status { extension_id: None } => {
            let v = client.list().json().await?;
            if json_out {
                outln!("{v}")?;
            } else {
                let hosts: Vec<HostStatus> =
                    serde_json::from_value(v["hosts"].clone()).unwrap_or_default();
                write!(std::io::stdout().lock(), "{}", table(&hosts))?;
            }
        }
        Cmd::Status {
            extension_id: Some(id),
        } => {
            let v = client.status(&id).json().await?;
            if json_out {
                outln!("{v}")?;
            } else {
                print_status(&v)?;
                // Like `systemctl status`: what it uses now.
                if let Ok(u) = client.usage(&id).await
                    && let Some(u) = u.usage
                {
                    print_usage(&u)?;
                }
            }
        }
        Cmd::Start {
            extension_id,
            entry,
            env,
            memory_max_mb,
            cpu_max_percent,
            args,
        } => {
            let entry = std::path::absolute(&entry)
                .map_err(|e| Failure::Usage(format!("entry {}: {e}", entry.display())))?;
            let params = StartParams {
                extension_id,
                wait_ready: false,
                options: HostOptions {
                    entry: Some(entry),
                    env: (!env.is_empty()).then(|| env.into_iter().collect()),
                    args: (!args.is_empty()).then_some(args),
                    memory_max_mb,
                    cpu_max_percent,
                    ..Default::default()
                },
            };
            let v = client.start(params).json().await?;
            print_host(&v, json_out)?;
        }
        Cmd::Stop {
            extension_id,
            timeout,
        } => {
            let timeout = timeout.map(Duration::from_millis);
            let v = client.stop(&extension_id, timeout).json().await?;
            print_host(&v, json_out)?;
        }
        Cmd::Restart { extension_id } => {
            let v = client.restart(&extension_id).json().await?;
            print_host(&v, json_out)?;
        }
        Cmd::Remove { extension_id } => {
            let v = client.remove(&extension_id).json().await?;
            if json_out {
                outln!("{v}")?;
            } else {
                outln!("removed {}", esc(&extension_id))?;
            }
        }
        Cmd::Logs {
            extension_id,
            lines,
            follow,
            raw,
        } => {
            let style = match (json_out, raw) {
                (true, _) => LogStyle::Json,
                (false, true) => LogStyle::Raw,
                (false, false) => LogStyle::Escaped,
            };
            if follow {
                let interrupted = interrupted();
                let stream = client.follow_logs(&extension_id, lines).await?;
                return stream_until(interrupted, stream, |line| print_log_line(&line, style))
                    .await;
            }
            let v = client.logs(&extension_id, lines).json().await?;
            if json_out {
                outln!("{v}")?;
            } else {
                for line in v["lines"].as_array().into_iter().flatten() {
                    print_log_line(line, style)?;
                }
            }
        }
        Cmd::Watch { extension_ids } => {
            let interrupted = interrupted();
            let ids = (!extension_ids.is_empty()).then_some(extension_ids);
            let events = client.subscribe(ids).await?;
            return stream_until(interrupted, events, |e| print_event(&e, json_out)).await;
        }
        Cmd::Shutdown => {
            let v = client.shutdown().json().await?;
            if json_out {
                outln!("{v}")?;
            } else {
                outln!("dscode-hostd is shutting down")?;
            }
        }
        Cmd::Reload => {
            let v = client.reload().json().await?;
            if json_out {
                outln!("{v}")?;
            } else {
                outln!("config reloaded")?;
            }
        }
        Cmd::Call { method, params } => {
            let params: Value = match params {
                Some(p) => serde_json::from_str(&p)
                    .map_err(|e| Failure::Usage(format!("params are not valid JSON: {e}")))?,
                None => json!({}),
            };
            let v: Value = client.call(&method, params).await?;
            if json_out {
                outln!("{v}")?;
            } else {
                let pretty = serde_json::to_string_pretty(&v)
                    .context("formatting the result")
                    .map_err(Failure::Other)?;
                outln!("{}", esc_json(&pretty))?;
            }
        }
    }
    Ok(())
}

/// Print each item of a subscription until `interrupted` (Ctrl-C or
/// SIGTERM: exit 0), the reader of stdout goes away (exit 0), or the daemon
/// does (exit 3). No timeout: a quiet host or daemon is not a dead one.
async fn stream_until<T>(
    interrupted: impl std::future::Future<Output = ()>,
    mut stream: dscode_hostd::client::Events<T>,
    mut print: impl FnMut(T) -> Result<(), Failure>,
) -> Result<(), Failure>
where
    T: serde::de::DeserializeOwned,
{
    tokio::pin!(interrupted);
    let closed = stdout_closed();
    tokio::pin!(closed);
    loop {
        let item = tokio::select! {
            i = stream.next() => i,
            () = &mut interrupted => return Ok(()),
            () = &mut closed => return Err(Failure::StdoutClosed),
        };
        match item {
            Some(Ok(item)) => print(item)?,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ClientError::Disconnected.into()),
        }
    }
}

/// Resolves when stdout is a pipe whose reader has gone away (`watch |
/// head -1` after its line), so a follower that has nothing to print does
/// not linger; never for a terminal or a file (a write there reports a
/// closed pipe anyway).
fn stdout_closed() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use std::os::unix::fs::FileTypeExt;
        use tokio::io::Interest;
        use tokio::io::unix::AsyncFd;
        let pipe = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map(std::fs::File::from)
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.file_type().is_fifo()));
        // The write end of a pipe reports EPOLLERR once no reader is left.
        let registered = pipe.and_then(|f| {
            // SAFETY: the File owns its descriptor (a dup of stdout) and moves
            // into the AsyncFd, so the fd stays open and refers to the same
            // pipe until the AsyncFd is dropped.
            unsafe { AsyncFd::register_with_interest(f, Interest::ERROR) }.ok()
        });
        if let Some(fd) = registered {
            return Box::pin(async move {
                let _ = fd.ready(Interest::ERROR).await;
            });
        }
    }
    Box::pin(std::future::pending())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when
/// this is called, so a signal that arrives while output is being printed is
/// not lost.
fn interrupted() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => std::future::pending().await,
            }
        }
    }
    #[cfg(windows)]
    {
        let ctrl_c = tokio::signal::windows::ctrl_c();
        async move {
            match ctrl_c {
                Ok(mut c) => {
                    c.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        }
    }
}

/// Shows control characters a host may have put in a string as visible
/// text, so that nothing it sends can drive the operator's terminal: every
/// C0 control but tab (so ESC, BEL, CR, LF, backspace), DEL and the C1
/// controls U+0080–U+009F become `\xNN` (two lowercase hex digits of the
/// code point, as Python's `repr` writes them). Everything else, backslashes
/// included, is printed as is, so the escaping is for reading, not a
/// reversible encoding; `--json` and `logs --raw` give the exact text.
fn esc(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_control(c) {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn is_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// JSON text for a person: serde_json already writes C0 controls as
/// `\u00XX`; DEL and C1 controls are written the same way (still the same
/// JSON value), so pretty-printed results are as safe as [`esc`]'s output.
fn esc_json(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_control(c) && c != '\n' {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// An optional string for a person: escaped, `-` when absent.
fn esc_or_dash(s: Option<&str>) -> Cow<'_, str> {
    s.map(esc).unwrap_or(Cow::Borrowed("-"))
}

fn print_host(v: &Value, json_out: bool) -> Result<(), Failure> {
    if json_out {
        return outln!("{v}");
    }
    match serde_json::from_value::<HostStatus>(v.clone()) {
        Ok(h) => write!(std::io::stdout().lock(), "{}", table(&[h])).map_err(Failure::from),
        Err(_) => outln!("{}", esc_json(&v.to_string())),
    }
}

fn print_info(v: &Value) -> Result<(), Failure> {
    write!(std::io::stdout().lock(), "{}", info_text(v)).map_err(Failure::from)
}

fn info_text(v: &Value) -> String {
    use std::fmt::Write as _;
    let s = |key: &str| esc(v[key].as_str().unwrap_or("?")).into_owned();
    let by_state = v["hostsByState"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{n} {}", esc(k)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "version   {}", s("version"));
    let _ = writeln!(
        out,
        "protocol  {}",
        esc_json(&v["protocolVersion"].to_string())
    );
    let _ = writeln!(out, "pid       {}", esc_json(&v["pid"].to_string()));
    let _ = writeln!(out, "socket    {}", s("socket"));
    let _ = writeln!(out, "started   {}", s("startedAt"));
    let _ = writeln!(out, "uptime    {}", fmt_ms(v["uptimeMs"].as_u64()));
    let _ = writeln!(
        out,
        "hosts     {}{}",
        esc_json(&v["hosts"].to_string()),
        if by_state.is_empty() {
            String::new()
        } else {
            format!(" ({by_state})")
        }
    );
    if let Some(e) = v["lastReloadError"].as_str() {
        let _ = writeln!(out, "reload    FAILED: {}", esc(e));
    }
    out
}

fn print_status(v: &Value) -> Result<(), Failure> {
    let Ok(h) = serde_json::from_value::<HostStatus>(v.clone()) else {
        return outln!("{}", esc_json(&v.to_string()));
    };
    write!(std::io::stdout().lock(), "{}", status_text(&h)).map_err(Failure::from)
}

fn status_text(h: &HostStatus) -> String {
    use std::fmt::Write as _;
    let mut out = table(std::slice::from_ref(h));
    out.push('\n');
    let _ = writeln!(out, "entry        {}", esc(&h.entry));
    let _ = writeln!(out, "node         {}", esc_or_dash(h.node.as_deref()));
    let _ = writeln!(out, "generation   {}", h.generation);
    let _ = writeln!(
        out,
        "budget       {} of {} restarts left",
        h.restart_budget.attempts_left, h.restart_budget.max_attempts
    );
    if let Some(t) = &h.next_restart_at {
        let _ = writeln!(out, "next restart {}", esc(t));
    }
    if let Some(t) = &h.started_at {
        let _ = writeln!(out, "started      {}", esc(t));
    }
    if let Some(mb) = h.memory_max_mb {
        let _ = writeln!(out, "memory max   {mb} MiB");
    }
    if let Some(p) = h.cpu_max_percent {
        let _ = writeln!(out, "cpu max      {p}%");
    }
    if let Some(e) = &h.last_exit {
        let _ = writeln!(
            out,
            "last exit    {} at {}",
            fmt_exit(e.code, e.signal),
            esc(&e.at)
        );
    }
    out
}

fn print_usage(u: &GroupUsage) -> Result<(), Failure> {
    let mem = u
        .rss_bytes
        .map(|b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "-".into());
    let cpu = u
        .cpu_ms
        .map(|ms| format!("{:.2}s", ms as f64 / 1000.0))
        .unwrap_or_else(|| "-".into());
    outln!("processes    {}", u.processes)?;
    outln!("memory       {mem}")?;
    outln!("cpu          {cpu}")
}

/// How `logs` prints a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogStyle {
    /// The `host.log`/`host.logs` item as JSON.
    Json,
    /// The text as the host wrote it (`--raw`).
    Raw,
    /// The text with control characters escaped (the default).
    Escaped,
}

fn print_log_line(v: &Value, style: LogStyle) -> Result<(), Failure> {
    if style == LogStyle::Json {
        return outln!("{v}");
    }
    if let Some(n) = v["lagged"].as_u64() {
        complain(&format!("fell {n} lines behind; output skipped"));
        return Ok(());
    }
    outln!("{}", log_text(v, style))
}

/// One log line for a person: `[stderr] ` before stderr lines.
fn log_text(v: &Value, style: LogStyle) -> String {
    let text = v["text"].as_str().unwrap_or("");
    let text = match style {
        LogStyle::Raw => Cow::Borrowed(text),
        _ => esc(text),
    };
    if v["stream"] == "stderr" {
        format!("[stderr] {text}")
    } else {
        text.into_owned()
    }
}

fn print_event(e: &StateEvent, json_out: bool) -> Result<(), Failure> {
    if json_out {
        let line = serde_json::to_string(e)
            .context("encoding an event")
            .map_err(Failure::Other)?;
        return outln!("{line}");
    }
    outln!("{}", event_text(e))
}

fn event_text(e: &StateEvent) -> String {
    let state = |s: Option<dscode_hostd::state::HostState>| {
        s.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
    };
    format!(
        "#{:<6} {}  {:<10} {:<24} {} -> {}  ({})",
        e.seq,
        esc(&e.at),
        format!("{:?}", e.kind).to_lowercase(),
        esc_or_dash(e.extension_id.as_deref()),
        state(e.from),
        state(e.to),
        esc(&e.reason)
    )
}

/// `EXTENSION  STATE  PID  UPTIME  RESTARTS  LAST EXIT`, aligned.
fn table(hosts: &[HostStatus]) -> String {
    let header = [
        "EXTENSION",
        "STATE",
        "PID",
        "UPTIME",
        "RESTARTS",
        "LAST EXIT",
    ];
    let rows: Vec<[String; 6]> = hosts
        .iter()
        .map(|h| {
            [
                esc(&h.extension_id).into_owned(),
                h.state.to_string(),
                h.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                fmt_ms(h.uptime_ms),
                h.restart_count.to_string(),
                h.last_exit
                    .as_ref()
                    .map(|e| fmt_exit(e.code, e.signal))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// `3m12s`, `45s`, `2h05m`, `1d03h`; `-` when unknown.
fn fmt_ms(ms: Option<u64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

fn fmt_exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("code {c}"),
        (None, Some(s)) => signal_name(s),
        _ => "-".into(),
    }
}

fn signal_name(s: i32) -> String {
    let name = match s {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return format!("signal {s}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_uptimes() {
        assert_eq!(fmt_ms(None), "-");
        assert_eq!(fmt_ms(Some(999)), "0s");
        assert_eq!(fmt_ms(Some(45_000)), "45s");
        assert_eq!(fmt_ms(Some(192_000)), "3m12s");
        assert_eq!(fmt_ms(Some(7_500_000)), "2h05m");
        assert_eq!(fmt_ms(Some(97_200_000)), "1d03h");
    }

    #[test]
    fn exits_read_like_code_or_signal() {
        assert_eq!(fmt_exit(Some(3), None), "code 3");
        assert_eq!(fmt_exit(None, Some(9)), "SIGKILL");
        assert_eq!(fmt_exit(None, Some(64)), "signal 64");
    }

    #[test]
    fn kv_parsing() {
        assert_eq!(parse_kv("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_kv("=x").is_err());
        assert!(parse_kv("x").is_err());
    }

    #[test]
    fn controls_are_shown_as_hex_escapes() {
        assert!(matches!(esc("plain\ttext é ✓"), Cow::Borrowed(_)));
        assert_eq!(esc("\x1b]52;c;ZXZpbA==\x07"), r"\x1b]52;c;ZXZpbA==\x07");
        assert_eq!(esc("\x1b[31mred\x1b[0m"), r"\x1b[31mred\x1b[0m");
        assert_eq!(esc("a\rb\nc\x08\x00"), r"a\x0db\x0ac\x08\x00");
        assert_eq!(
            esc("del\x7f c1\u{9b}\u{80}\u{9f} \u{a0}"),
            "del\\x7f c1\\x9b\\x80\\x9f \u{a0}"
        );
        // Every code point up to U+00FF: escaped exactly when a control.
        for c in (0u32..=0xff).filter_map(char::from_u32) {
            let shown = esc(c.encode_utf8(&mut [0; 4])).into_owned();
            let control = (c < ' ' && c != '\t') || ('\u{7f}'..='\u{9f}').contains(&c);
            assert_eq!(shown.starts_with("\\x"), control, "{c:?}");
        }
    }

    #[test]
    fn json_for_people_escapes_del_and_c1_as_json() {
        let v = json!({"s": "\x1b]0;t\x07 \u{7f} \u{9b}"});
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        let shown = esc_json(&pretty);
        assert!(
            !shown.chars().any(|c| is_control(c) && c != '\n'),
            "{shown}"
        );
        assert_eq!(serde_json::from_str::<Value>(&shown).unwrap(), v);
    }

    fn hostile_status() -> HostStatus {
        use dscode_hostd::state::HostState;
        HostStatus {
            extension_id: "acme.x".into(),
            state: HostState::Crashed,
            pid: None,
            generation: 2,
            restart_count: 1,
            restart_budget: dscode_hostd::protocol::RestartBudget {
                max_attempts: 3,
                attempts_left: 2,
            },
            next_restart_at: Some("\x1b]0;next\x07".into()),
            started_at: Some("\x1b]0;started\x07".into()),
            uptime_ms: None,
            last_exit: Some(dscode_hostd::protocol::LastExit {
                code: Some(3),
                signal: None,
                at: "\x1b[31mat".into(),
            }),
            entry: "/ext/\x1b]52;c;ZXZpbA==\x07.js".into(),
            node: Some("\u{9b}node".into()),
            ready: false,
            ready_at: None,
            memory_max_mb: None,
            cpu_max_percent: None,
            leftover_pids: Vec::new(),
        }
    }

    fn assert_safe(what: &str, s: &str) {
        assert!(
            !s.chars().any(|c| is_control(c) && c != '\n'),
            "{what}: {s:?}"
        );
    }

    #[test]
    fn status_event_info_and_log_text_are_escaped() {
        let status = status_text(&hostile_status());
        assert_safe("status", &status);
        assert!(
            status.contains(r"/ext/\x1b]52;c;ZXZpbA==\x07.js"),
            "{status}"
        );
        assert!(
            status.contains(r"last exit    code 3 at \x1b[31mat"),
            "{status}"
        );

        let event = StateEvent {
            kind: dscode_hostd::client::EventKind::Transition,
            seq: 7,
            extension_id: Some("acme.\x1bx".into()),
            from: None,
            to: None,
            generation: None,
            pid: None,
            reason: "exited: \x1b]52;c;ZXZpbA==\x07\r\n".into(),
            at: "\x07".into(),
            status: None,
            missed: None,
        };
        let line = event_text(&event);
        assert_safe("event", &line);
        assert!(
            line.ends_with(r"(exited: \x1b]52;c;ZXZpbA==\x07\x0d\x0a)"),
            "{line}"
        );

        let info = info_text(&json!({
            "version": "1\x1b[2J",
            "protocolVersion": 1,
            "pid": 1,
            "socket": "/s\u{9b}",
            "startedAt": "\x07",
            "uptimeMs": 5,
            "hosts": 1,
            "hostsByState": {"\x1b[31m": 1},
            "lastReloadError": "bad key at \x1b]0;t\x07",
        }));
        assert_safe("info", &info);
        assert!(info.contains(r"FAILED: bad key at \x1b]0;t\x07"), "{info}");

        let line = json!({"stream": "stderr", "text": "\x1b[31merr"});
        assert_eq!(log_text(&line, LogStyle::Escaped), r"[stderr] \x1b[31merr");
        assert_eq!(log_text(&line, LogStyle::Raw), "[stderr] \x1b[31merr");
        let table = table(&[HostStatus {
            extension_id: "a\x1bb".into(),
            ..hostile_status()
        }]);
        assert_safe("table", &table);
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
