//! `dscode-hostctl`: the command-line client of dscode-hostd.
//!
//! Exit codes: 0 success (also when stdout is closed early, as by `| head`),
//! 1 the daemon returned an error, 2 usage error, 3 no usable connection:
//! cannot connect, refused to connect (the socket is not private), no reply
//! within `--timeout`, the daemon went away or sent an over-long line.
//!
//! Everything printed for a person is escaped (see [`escape::esc`]): a host
//! cannot drive the operator's terminal with escape sequences. `--json` is
//! exact JSON and `logs --raw` prints the host's lines as they are.
//!
//! Here: `main`, the exit codes and `run` (one typed client call per
//! subcommand). The command line is `args.rs`'s, the escaping `escape.rs`'s,
//! the text a person reads `output.rs`'s, following a subscription
//! `stream.rs`'s.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use dscode_hostd::client::{
    Client, ClientError, ClientOptions, HostOptions, HostStatus, StartParams,
};
use serde_json::{Value, json};

use args::{Args, Cmd};
use escape::{esc, esc_json};
use output::{
    LogStyle, print_event, print_host, print_info, print_log_line, print_status, print_usage, table,
};
use stream::{interrupted, stream_until};

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

// Declared after `outln!`, which they use.
mod args;
mod escape;
mod output;
mod stream;

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
