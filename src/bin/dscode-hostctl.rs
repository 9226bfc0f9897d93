//! `dscode-hostctl`: command-line client for dscode-hostd.
//!
//! Only `call METHOD [JSON-PARAMS]` for now; the full CLI comes with the
//! service issue.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Control dscode-hostd.
///
/// Example: dscode-hostctl call host.list
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Control socket (default: the daemon's default).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Call a method with raw JSON params and print the result.
    ///
    /// Example: dscode-hostctl call host.status '{"extensionId":"ms-python.python"}'
    Call {
        method: String,
        params: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dscode-hostctl: {e:#}");
            std::process::ExitCode::from(3)
        }
    }
}

#[cfg(unix)]
fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let socket = dscode_hostd::paths::resolve_socket(args.socket.as_deref(), None);
    let Cmd::Call { method, params } = args.command;
    let params: serde_json::Value = match params {
        Some(p) => serde_json::from_str(&p).context("params are not valid JSON")?,
        None => serde_json::json!({}),
    };
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).with_context(|| {
        format!(
            "cannot connect to {}; start the daemon with `dscode-hostd`",
            socket.display()
        )
    })?;
    let req = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    writeln!(stream, "{req}")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line).context("bad reply")?;
    if let Some(err) = v.get("error") {
        eprintln!(
            "error {}: {}",
            err["code"],
            err["message"].as_str().unwrap_or("")
        );
        return Ok(std::process::ExitCode::from(1));
    }
    println!("{}", serde_json::to_string_pretty(&v["result"])?);
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(not(unix))]
fn run(_args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("dscode-hostctl is not yet available on this platform")
}
