//! The command line: `Args` and its subcommands (`Cmd`) as clap declares
//! them, with the value parsers they use.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Control dscode-hostd, the DSCode extension-host supervisor.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Example: dscode-hostctl start acme.hello ~/ext/hello/main.js --env LOG=1 -- --verbose"
)]
pub(crate) struct Args {
    /// Control socket [default: $DSCODE_HOSTD_SOCKET, else
    /// $XDG_RUNTIME_DIR/dscode-hostd/hostd.sock, else
    /// ${XDG_STATE_HOME:-~/.local/state}/dscode-hostd/run/hostd.sock; without a
    /// home directory /tmp/dscode-hostd-<uid>/hostd.sock: the same default as
    /// dscode-hostd]
    #[arg(long, global = true, value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// Print raw JSON results (NDJSON for `watch` and `logs -f`).
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// How long to wait to connect, and for each reply beyond the wait a
    /// call asks for (a stop's timeout, a request's); `watch` and `logs -f`
    /// stream without one. Give it before the subcommand (`stop --timeout`
    /// is the stop's own, in ms).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
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

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 2m)"))
}

pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
