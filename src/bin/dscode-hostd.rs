//! `dscode-hostd`: the extension-host supervisor daemon. Runs in the
//! foreground; systemd or launchd supervise it.

use std::path::PathBuf;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Supervise DSCode extension hosts; control them with JSON-RPC 2.0 over a
/// local socket.
///
/// Example: dscode-hostd --socket /tmp/hostd-test/hostd.sock
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Config file (TOML). Default: ~/.config/dscode-hostd/config.toml if it exists.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Control socket path. Default: $DSCODE_HOSTD_SOCKET, config `socket`,
    /// $XDG_RUNTIME_DIR/dscode-hostd/hostd.sock, /tmp/dscode-hostd-<uid>/hostd.sock.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// State directory. Default: ~/.local/state/dscode-hostd.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dscode-hostd: error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let opts = dscode_hostd::daemon::Options {
        config: args.config,
        socket: args.socket,
        state_dir: args.state_dir,
    };
    match runtime.block_on(dscode_hostd::daemon::run(opts)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dscode-hostd: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
