//! The daemon's composition root: config, socket, lock, supervisor, RPC
//! server, signals and graceful shutdown. The `dscode-hostd` binary is a thin
//! wrapper around [`run`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use interprocess::local_socket::{ListenerOptions, tokio::Listener};
use tokio::sync::{Notify, watch};

use crate::config::{self, Config};
use crate::paths;
use crate::rpc::{self, DaemonInfo, RpcContext, server::ServerLimits, transport::Limits};
use crate::supervisor::{Supervisor, SupervisorConfig};

/// Overall bound on stopping every host at shutdown.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Command-line options of `dscode-hostd`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

fn load_config(explicit: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match explicit {
        Some(p) => Config::load(p, true)?,
        None => match config::default_config_path() {
            Some(p) => Config::load(&p, false)?,
            None => Config::default(),
        },
    })
}

#[cfg(unix)]
fn bind(socket: &Path) -> anyhow::Result<Listener> {
    use interprocess::local_socket::{GenericFilePath, ToFsName};
    use interprocess::os::unix::local_socket::ListenerOptionsExt;
    // We hold the instance lock, so an existing file is a dead daemon's,
    // unless something without the lock answers on it.
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            bail!(
                "another process is serving socket {}; stop it first, or pass a different --socket",
                socket.display()
            );
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing stale socket {}", socket.display()))?;
        tracing::info!(socket = %socket.display(), "reclaimed a stale socket");
    }
    let name = socket
        .to_fs_name::<GenericFilePath>()
        .with_context(|| format!("socket name {}", socket.display()))?;
    ListenerOptions::new()
        .name(name)
        .mode(0o600)
        .create_tokio()
        .with_context(|| format!("binding {}", socket.display()))
}

#[cfg(windows)]
fn bind(socket: &Path) -> anyhow::Result<Listener> {
    use interprocess::local_socket::{GenericNamespaced, ToNsName};
    let name = socket
        .file_name()
        .and_then(|n| n.to_str())
        .context("pipe name")?
        .to_ns_name::<GenericNamespaced>()?;
    ListenerOptions::new()
        .name(name)
        .create_tokio()
        .with_context(|| format!("creating pipe {}", socket.display()))
}

/// Run the daemon in the foreground until SIGTERM, SIGINT or `daemon.shutdown`.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let config = load_config(opts.config.as_deref())?;
    let socket = paths::resolve_socket(opts.socket.as_deref(), config.socket.as_deref());
    let runtime_dir = socket
        .parent()
        .map(Path::to_path_buf)
        .context("socket path has no directory")?;
    #[cfg(unix)]
    paths::ensure_private_dir(&runtime_dir)?;
    #[cfg(unix)]
    let _lock = paths::lock_instance(&socket)?;
    let state_dir = paths::resolve_state_dir(opts.state_dir.as_deref());
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating state dir {}", state_dir.display()))?;

    let listener = bind(&socket)?;

    let mut sup_config = SupervisorConfig::new(runtime_dir);
    sup_config.node = config.node.clone();
    sup_config.restart = config.restart.policy();
    sup_config.stop_timeout = config.stop_timeout();
    sup_config.log_lines = config.log_lines;
    let supervisor = Supervisor::new(sup_config);

    let shutdown_requested = Arc::new(Notify::new());
    let module = rpc::build_module(RpcContext {
        supervisor: supervisor.clone(),
        info: DaemonInfo {
            pid: std::process::id(),
            started_at: SystemTime::now(),
            started: Instant::now(),
            socket: socket.clone(),
        },
        shutdown: shutdown_requested.clone(),
    });
    let (close_tx, close_rx) = watch::channel(false);
    let limits = ServerLimits {
        max_connections: config.max_connections,
        per_connection: Limits {
            max_message_bytes: config.max_message_bytes,
            max_in_flight: config.max_requests_per_connection,
        },
    };
    let server = tokio::spawn(rpc::server::run(listener, module.into(), limits, close_rx));
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "listening");

    let mut signals = Signals::new()?;
    let why = tokio::select! {
        s = signals.next() => s,
        () = shutdown_requested.notified() => "daemon.shutdown",
    };
    tracing::info!(reason = why, "shutting down: stopping every host");
    let stop_all = supervisor.shutdown(SHUTDOWN_DEADLINE);
    tokio::pin!(stop_all);
    loop {
        tokio::select! {
            () = &mut stop_all => break,
            s = signals.next() => {
                tracing::warn!(signal = s, "second signal during shutdown: killing every host now");
                supervisor.kill_all_now();
            }
        }
    }
    let _ = std::fs::remove_file(&socket);
    close_tx.send_replace(true);
    let _ = server.await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT (Ctrl-C elsewhere) as one stream.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
                int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
