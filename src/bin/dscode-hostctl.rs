//! `dscode-hostctl`: the command-line client of dscode-hostd.
//!
//! Exit codes: 0 success, 1 the daemon returned an error, 2 usage error,
//! 3 cannot connect (or the daemon went away).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dscode_hostd::client::{Client, ClientError, GroupUsage, HostStatus, StartParams, StateEvent};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Control dscode-hostd, the DSCode extension-host supervisor.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Example: dscode-hostctl start acme.hello ~/ext/hello/main.js --env LOG=1 -- --verbose"
)]
struct Args {
    /// Control socket [default: $DSCODE_HOSTD_SOCKET, else $XDG_RUNTIME_DIR/dscode-hostd/hostd.sock]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print raw JSON results (NDJSON for `watch` and `logs -f`).
    #[arg(long, global = true)]
    json: bool,
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

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// How a command failed, and so which exit code it gets.
enum Failure {
    Daemon(ClientError),
    Connect(String),
    Usage(String),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Connect { .. } | ClientError::Disconnected => {
                Failure::Connect(e.to_string())
            }
            other => Failure::Daemon(other),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Daemon(ClientError::Rpc { code, message, .. })) => {
            eprintln!("dscode-hostctl: error {code}: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Daemon(e)) => {
            eprintln!("dscode-hostctl: {e}");
            ExitCode::from(1)
        }
        Err(Failure::Connect(msg)) => {
            eprintln!("dscode-hostctl: {msg}");
            ExitCode::from(3)
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("dscode-hostctl: {msg}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let socket = dscode_hostd::paths::resolve_socket(args.socket.as_deref(), None);
    let json_out = args.json;
    let client = Client::connect(&socket).await?;
    match args.command {
        Cmd::Info => {
            let info: Value = client.info().await?;
            if json_out {
                println!("{info}");
            } else {
                print_info(&info);
            }
        }
        Cmd::List | Cmd::Status { extension_id: None } => {
            let v: Value = client.call("host.list", json!({})).await?;
            if json_out {
                println!("{v}");
            } else {
                let hosts: Vec<HostStatus> =
                    serde_json::from_value(v["hosts"].clone()).unwrap_or_default();
                print!("{}", table(&hosts));
            }
        }
        Cmd::Status {
            extension_id: Some(id),
        } => {
            let v: Value = client
                .call("host.status", json!({ "extensionId": id }))
                .await?;
            if json_out {
                println!("{v}");
            } else {
                print_status(&v);
                // Like `systemctl status`: what it uses now.
                if let Ok(u) = client.usage(&id).await
                    && let Some(u) = u.usage
                {
                    print_usage(&u);
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
                entry: Some(entry),
                env: (!env.is_empty()).then(|| env.into_iter().collect()),
                args: (!args.is_empty()).then_some(args),
                memory_max_mb,
                cpu_max_percent,
                ..Default::default()
            };
            let v: Value = client
                .call(
                    "host.start",
                    serde_json::to_value(params).expect("params serialize"),
                )
                .await?;
            print_host(&v, json_out);
        }
        Cmd::Stop {
            extension_id,
            timeout,
        } => {
            let mut p = json!({ "extensionId": extension_id });
            if let Some(t) = timeout {
                p["timeoutMs"] = json!(t);
            }
            print_host(&client.call("host.stop", p).await?, json_out);
        }
        Cmd::Restart { extension_id } => {
            let v = client
                .call("host.restart", json!({ "extensionId": extension_id }))
                .await?;
            print_host(&v, json_out);
        }
        Cmd::Remove { extension_id } => {
            let v: Value = client
                .call("host.remove", json!({ "extensionId": extension_id }))
                .await?;
            if json_out {
                println!("{v}");
            } else {
                println!("removed {extension_id}");
            }
        }
        Cmd::Logs {
            extension_id,
            lines,
            follow,
        } => {
            if follow {
                let interrupted = interrupted();
                tokio::pin!(interrupted);
                let mut stream = client.follow_logs(&extension_id, lines).await?;
                loop {
                    let item = tokio::select! {
                        i = stream.next() => i,
                        () = &mut interrupted => return Ok(()),
                    };
                    match item {
                        Some(Ok(line)) => print_log_line(&line, json_out),
                        Some(Err(e)) => return Err(e.into()),
                        None => return Err(ClientError::Disconnected.into()),
                    }
                }
            }
            let v: Value = client
                .call(
                    "host.logs",
                    json!({ "extensionId": extension_id, "lines": lines }),
                )
                .await?;
            if json_out {
                println!("{v}");
            } else {
                for line in v["lines"].as_array().into_iter().flatten() {
                    print_log_line(line, false);
                }
            }
        }
        Cmd::Watch { extension_ids } => {
            let interrupted = interrupted();
            tokio::pin!(interrupted);
            let ids = (!extension_ids.is_empty()).then_some(extension_ids);
            let mut events = client.subscribe(ids).await?;
            loop {
                let item = tokio::select! {
                    i = events.next() => i,
                    () = &mut interrupted => return Ok(()),
                };
                match item {
                    Some(Ok(e)) => print_event(&e, json_out),
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(ClientError::Disconnected.into()),
                }
            }
        }
        Cmd::Shutdown => {
            client.shutdown().await?;
            if json_out {
                println!("{}", json!({"ok": true}));
            } else {
                println!("dscode-hostd is shutting down");
            }
        }
        Cmd::Reload => {
            let v = client.reload().await?;
            if json_out {
                println!("{v}");
            } else {
                println!("config reloaded");
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
                println!("{v}");
            } else {
                println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
            }
        }
    }
    Ok(())
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

fn print_host(v: &Value, json_out: bool) {
    if json_out {
        println!("{v}");
        return;
    }
    match serde_json::from_value::<HostStatus>(v.clone()) {
        Ok(h) => print!("{}", table(&[h])),
        Err(_) => println!("{v}"),
    }
}

fn print_info(v: &Value) {
    let by_state = v["hostsByState"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    println!("version   {}", v["version"].as_str().unwrap_or("?"));
    println!("protocol  {}", v["protocolVersion"]);
    println!("pid       {}", v["pid"]);
    println!("socket    {}", v["socket"].as_str().unwrap_or("?"));
    println!("started   {}", v["startedAt"].as_str().unwrap_or("?"));
    println!("uptime    {}", fmt_ms(v["uptimeMs"].as_u64()));
    println!(
        "hosts     {}{}",
        v["hosts"],
        if by_state.is_empty() {
            String::new()
        } else {
            format!(" ({by_state})")
        }
    );
    if let Some(e) = v["lastReloadError"].as_str() {
        println!("reload    FAILED: {e}");
    }
}

fn print_status(v: &Value) {
    let Ok(h) = serde_json::from_value::<HostStatus>(v.clone()) else {
        println!("{v}");
        return;
    };
    print!("{}", table(std::slice::from_ref(&h)));
    println!();
    println!("entry        {}", h.entry);
    println!("node         {}", h.node.as_deref().unwrap_or("-"));
    println!("generation   {}", h.generation);
    println!(
        "budget       {} of {} restarts left",
        h.restart_budget.attempts_left, h.restart_budget.max_attempts
    );
    if let Some(t) = &h.next_restart_at {
        println!("next restart {t}");
    }
    if let Some(t) = &h.started_at {
        println!("started      {t}");
    }
    if let Some(mb) = h.memory_max_mb {
        println!("memory max   {mb} MiB");
    }
    if let Some(p) = h.cpu_max_percent {
        println!("cpu max      {p}%");
    }
    if let Some(e) = &h.last_exit {
        println!("last exit    {} at {}", fmt_exit(e.code, e.signal), e.at);
    }
}

fn print_usage(u: &GroupUsage) {
    let mem = u
        .rss_bytes
        .map(|b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "-".into());
    let cpu = u
        .cpu_ms
        .map(|ms| format!("{:.2}s", ms as f64 / 1000.0))
        .unwrap_or_else(|| "-".into());
    println!("processes    {}", u.processes);
    println!("memory       {mem}");
    println!("cpu          {cpu}");
}

fn print_log_line(v: &Value, json_out: bool) {
    if json_out {
        println!("{v}");
        return;
    }
    if let Some(n) = v["lagged"].as_u64() {
        eprintln!("dscode-hostctl: fell {n} lines behind; output skipped");
        return;
    }
    let text = v["text"].as_str().unwrap_or("");
    if v["stream"] == "stderr" {
        println!("[stderr] {text}");
    } else {
        println!("{text}");
    }
}

fn print_event(e: &StateEvent, json_out: bool) {
    if json_out {
        println!("{}", serde_json::to_string(e).expect("JSON"));
        return;
    }
    let state = |s: Option<dscode_hostd::state::HostState>| {
        s.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
    };
    println!(
        "#{:<6} {}  {:<10} {:<24} {} -> {}  ({})",
        e.seq,
        e.at,
        format!("{:?}", e.kind).to_lowercase(),
        e.extension_id.as_deref().unwrap_or("-"),
        state(e.from),
        state(e.to),
        e.reason
    );
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
                h.extension_id.clone(),
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
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
