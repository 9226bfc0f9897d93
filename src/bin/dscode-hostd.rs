//! `dscode-hostd`: the extension-host supervisor daemon. Runs in the
//! foreground; systemd or launchd supervise it.
//!
//! The entry point: the config, read once into `daemon::Settings`; logging;
//! the runtime; then `daemon::bind` and `daemon::run` with the signals as
//! its triggers.
//!
//! Exit status: 0 after a clean shutdown, 2 for a config error (or a config
//! file others could write), 1 otherwise.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dscode_hostd::daemon;

/// Supervise DSCode extension hosts; control them with JSON-RPC 2.0 over a
/// local socket.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Signals: TERM, INT, QUIT stop every host and exit 0; HUP reloads the config; \
                  USR1 reopens the log file; USR2, ALRM and the other signals whose default \
                  would kill the daemon are logged and ignored.\n\n\
                  Example: dscode-hostd --socket /tmp/hostd-demo/hostd.sock"
)]
struct Args {
    /// Config file (TOML) [default: ~/.config/dscode-hostd/config.toml if it exists]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Control socket [default: $DSCODE_HOSTD_SOCKET, else config `socket`,
    /// else $XDG_RUNTIME_DIR/dscode-hostd/hostd.sock, else
    /// ${XDG_STATE_HOME:-~/.local/state}/dscode-hostd/run/hostd.sock; only
    /// without a home directory /tmp/dscode-hostd-<uid>/hostd.sock, whose
    /// owner is checked]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// State directory, made 0700 [default: ~/.local/state/dscode-hostd;
    /// without a home directory /tmp/dscode-hostd-state-<uid>]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let opts = daemon::Options {
        config: args.config,
        socket: args.socket,
        state_dir: args.state_dir,
    };
    let config = match daemon::load_config(&opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dscode-hostd: {e}");
            return ExitCode::from(2);
        }
    };
    let settings = match daemon::Settings::from_config(&config, &opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dscode-hostd: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let logging = match daemon::init_logging(&settings.logging) {
        Ok(logging) => logging,
        Err(e) => {
            eprintln!("dscode-hostd: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dscode-hostd: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _guard = logging.guard;
    match runtime.block_on(serve(settings, logging.reopen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("dscode-hostd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Bind, then serve until a signal says stop.
async fn serve(settings: daemon::Settings, logs: daemon::LogReopen) -> anyhow::Result<()> {
    daemon::prepare_process();
    // Before anything can accept a client: a SIGTERM that arrives while we
    // start up must shut down cleanly, not kill us.
    let signals = daemon::Signals::new()?;
    let bound = daemon::bind(&settings)?;
    daemon::run(bound, settings, signals.triggers(logs)).await
}
