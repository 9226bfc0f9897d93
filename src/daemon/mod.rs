//! The daemon's composition root. The binary does, in order:
//! [`load_config`] → [`Settings::from_config`] (the config read once) →
//! [`init_logging`] → [`prepare_process`] → [`Signals::new`] → [`bind`] (the
//! instance lock and the control socket) → [`run`] (serve until a
//! [`Trigger`] says stop). `run` takes a bound listener and a stream of
//! triggers, so tests run the daemon in-process on a socket of their own
//! with [`shutdown_on`] a future of theirs (as mini-redis's
//! `server::run(listener, shutdown)`).
//!
//! `run` owns the start-up clean-up (a dead predecessor's hosts and IPC
//! directories), `[[host]]` declaration and autostart, the main loop (signal
//! triggers; `Control` requests from RPC: reload, shutdown), reload, and
//! the shutdown sequence. Each other mechanism has its file: `settings`,
//! `listener`, `probe` (cgroups, sandbox support), `logging`, `signals`,
//! `systemd`.

mod listener;
mod logging;
mod probe;
mod settings;
mod signals;
mod systemd;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};

use crate::config::HostConfig;
use crate::rpc::{self, Control, DaemonInfo, DaemonState, RpcContext};
use crate::supervisor::{CgroupRoots, Supervisor};
use systemd::{Notice, notify, status_line};

pub use listener::{ActivationError, Bound, bind};
pub use logging::{LogGuard, LogReopen, Logging, init_logging};
pub use settings::{
    LoadError, LogSettings, Options, SandboxSettings, Settings, SettingsError, config_source,
    load_config,
};
pub use signals::Signals;

/// Overall bound on stopping every host at shutdown.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// What the world outside the control socket asks of a running daemon
/// (signals, or a test's shutdown future).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Re-read the config (SIGHUP).
    Reload,
    /// Stop every host and return, for this reason; a second one during
    /// the shutdown kills every host at once.
    Stop(&'static str),
}

/// The triggers of a daemon that stops when `shutdown` completes and is
/// never asked for anything else: [`run`]'s argument for a daemon run
/// in-process.
pub fn shutdown_on(shutdown: impl Future<Output = ()>) -> impl Stream<Item = Trigger> {
    futures_util::stream::once(async move {
        shutdown.await;
        Trigger::Stop("shutdown requested")
    })
}

/// Descriptors the daemon itself holds per ready host (measured: the
/// child's pidfd, its stdout and stderr pipes, the IPC listening socket
/// and the accepted IPC connection); README "Daemon options" says so.
pub const FDS_PER_HOST: u64 = 5;

/// Raise the soft open-files limit to the hard one, and log both: every
/// host costs the daemon [`FDS_PER_HOST`] descriptors, and 1024 is too few
/// for a thousand hosts.
#[cfg(unix)]
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let mut now = soft;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => now = hard,
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-files limit"),
        }
    }
    tracing::info!(
        limit = now,
        was = soft,
        hard,
        hosts = now / FDS_PER_HOST,
        "open-files limit (each ready host costs the daemon about {FDS_PER_HOST} descriptors)"
    );
}

/// The daemon's memory, `/proc/<pid>/environ`, `maps` and fds are closed
/// to every process without `CAP_SYS_PTRACE` (hosts have no capability),
/// including processes of the daemon's own user: its environment is not the
/// hosts' allowlisted one. The price: an unprivileged debugger or `perf` can
/// no longer attach to the daemon (root still can), and it leaves no core
/// file.
#[cfg(target_os = "linux")]
fn not_dumpable() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot make the daemon non-dumpable");
    }
}

/// Process-wide set-up for the real daemon (not for one run in a test's
/// process): the open-files limit raised, the process made non-dumpable.
pub fn prepare_process() {
    #[cfg(unix)]
    raise_nofile_limit();
    #[cfg(target_os = "linux")]
    not_dumpable();
}

/// What start-up found before serving.
struct Started {
    roots: CgroupRoots,
    sandbox: Option<crate::protocol::SandboxInfo>,
    recovered: Vec<crate::protocol::Recovered>,
}

/// Start-up before any client is served: the state directory, the probes,
/// and what a predecessor that was SIGKILLed left behind.
fn start_up(settings: &Settings) -> anyhow::Result<Started> {
    let state_dir = &settings.state_dir;
    #[cfg(unix)]
    if crate::paths::make_private_dir(state_dir, "state directory")? {
        tracing::warn!(dir = %state_dir.display(), "the state directory was open to group or others: made it 0700");
    }
    #[cfg(not(unix))]
    {
        use anyhow::Context;
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating state dir {}", state_dir.display()))?;
    }
    let roots = probe::cgroup_roots(&settings.sandbox);
    let sandbox = probe::sandbox_support(&settings.sandbox, &roots)?;
    // Hosts a SIGKILLed predecessor left behind (its direct children died
    // with it through PDEATHSIG; their own children may not have): only
    // what the record proves was ours (our cgroup roots, our hosts'
    // environment, the recorded group leader and start time).
    // Records name only cgroup2 cgroups (the v1 ones hold limits, not
    // processes to kill).
    let provenance = crate::supervisor::records::Provenance {
        cgroup_roots: roots.v2.iter().cloned().collect(),
        runtime_dir: settings.runtime_dir.clone(),
    };
    let recovered =
        crate::supervisor::records::reap_leftovers(&state_dir.join("running.json"), &provenance);
    for r in &recovered {
        tracing::warn!(extension_id = %r.extension_id, pid = r.pid, reaped = r.reaped, detail = %r.detail, "a previous daemon died leaving this host running");
    }
    // Every host IPC directory is a leftover at start-up: no host runs yet.
    #[cfg(unix)]
    {
        let root = crate::ipc::transport::ipc_root(&settings.runtime_dir);
        if let Ok(dirs) = std::fs::read_dir(&root) {
            let n = dirs.count();
            if n > 0 {
                match std::fs::remove_dir_all(&root) {
                    Ok(()) => {
                        tracing::info!(count = n, "removed IPC directories a previous daemon left")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, dir = %root.display(), "cannot remove leftover IPC directories")
                    }
                }
            }
        }
    }
    Ok(Started {
        roots,
        sandbox,
        recovered,
    })
}

/// Serve `bound` until a [`Trigger::Stop`] (from `triggers`: the binary's
/// [`Signals`], or a test's [`shutdown_on`]) or `daemon.shutdown`; then stop
/// every host, remove the socket (unless systemd owns it) and return.
pub async fn run(
    bound: Bound,
    mut settings: Settings,
    triggers: impl Stream<Item = Trigger>,
) -> anyhow::Result<()> {
    let started = match start_up(&settings) {
        Ok(s) => s,
        Err(e) => {
            if !bound.activated {
                let _ = std::fs::remove_file(&bound.socket);
            }
            return Err(e);
        }
    };
    let socket = bound.socket.clone();
    let activated = bound.activated;
    let mut supervisor_config = settings.supervisor.clone();
    supervisor_config.cgroups = started.roots;
    let supervisor = Supervisor::new(supervisor_config);
    let state = Arc::new(DaemonState {
        config_path: settings.config_path.clone(),
        last_reload_error: Mutex::new(None),
        sandbox: started.sandbox,
    });
    let (control_tx, mut control_rx) = mpsc::channel(8);
    let module = rpc::build_module(RpcContext {
        supervisor: supervisor.clone(),
        info: DaemonInfo {
            pid: std::process::id(),
            started_at: SystemTime::now(),
            started: Instant::now(),
            socket: socket.clone(),
            recovered: started.recovered,
        },
        control: control_tx,
        state: state.clone(),
    });
    let (close_tx, close_rx) = watch::channel(false);
    let hosts: rpc::server::HostCheck = {
        let supervisor = supervisor.clone();
        Arc::new(move |pid| supervisor.host_peers().judge(pid))
    };
    // The rest of `bound` (the instance lock) lives until this returns.
    let listener = bound.listener;
    let server = tokio::spawn(rpc::server::run(
        listener,
        module.into(),
        settings.server,
        hosts,
        close_rx,
    ));
    tracing::info!(socket = %socket.display(), pid = std::process::id(), activated, "listening");

    apply_hosts(&supervisor, &settings.hosts, true).await;
    let status_task = tokio::spawn(systemd::report_status(supervisor.clone()));
    let watchdog_task = systemd::spawn_watchdog();
    let status = status_line(&supervisor);
    notify(Notice::Ready(&status));
    tracing::info!(%status, "ready: autostart hosts spawned");

    let triggers = std::pin::pin!(triggers);
    let mut triggers = triggers.fuse();
    let why = loop {
        tokio::select! {
            t = triggers.next(), if !triggers.is_done() => match t {
                Some(Trigger::Reload) => {
                    let _ = reload(&mut settings, &supervisor, &state).await;
                }
                Some(Trigger::Stop(why)) => break why,
                None => {}
            },
            Some(c) = control_rx.recv() => match c {
                Control::Reload(reply) => {
                    let _ = reply.send(reload(&mut settings, &supervisor, &state).await);
                }
                Control::Shutdown => break crate::protocol::names::DAEMON_SHUTDOWN,
            },
            else => break "nothing can ask for a shutdown any more",
        }
    };
    let stop_all = supervisor.shutdown(SHUTDOWN_DEADLINE);
    tokio::pin!(stop_all);
    // Its first poll makes the supervisor refuse mutations (-32005): do it
    // before saying so, or a request sent on seeing this line could still
    // be accepted.
    let stopped = futures_util::FutureExt::now_or_never(&mut stop_all).is_some();
    tracing::info!(reason = why, "shutting down: stopping every host");
    notify(Notice::Stopping);
    status_task.abort();
    if !stopped {
        loop {
            tokio::select! {
                () = &mut stop_all => break,
                t = triggers.next(), if !triggers.is_done() => match t {
                    Some(Trigger::Stop(why)) => {
                        tracing::warn!(signal = why, "second signal during shutdown: killing every host now");
                        supervisor.kill_all_now();
                    }
                    Some(Trigger::Reload) | None => {}
                },
            }
        }
    }
    if !activated {
        let _ = std::fs::remove_file(&socket);
    }
    // This daemon's empty host cgroups, in every hierarchy it makes them
    // in: cgroup2, and the v1 `memory` and `cpu` ones of limits.
    #[cfg(target_os = "linux")]
    {
        let roots = supervisor.config().cgroups.clone();
        for root in roots.v2.iter().chain(&roots.memory_v1).chain(&roots.cpu_v1) {
            crate::cgroup::remove_ours(root);
        }
    }
    close_tx.send_replace(true);
    let _ = server.await;
    if let Some(w) = watchdog_task {
        w.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Re-read the config: new defaults for later starts, newly declared
/// autostart hosts started, running hosts untouched. An invalid config keeps
/// the old one and is reported in `daemon.info` as `lastReloadError`.
async fn reload(
    settings: &mut Settings,
    supervisor: &Arc<Supervisor>,
    state: &DaemonState,
) -> Result<rpc::methods::ReloadReport, String> {
    notify(Notice::Reloading);
    let result = match settings.reread() {
        Err(e) => Err(e),
        Ok(mut new) => {
            for key in settings.restart_only_changes(&new) {
                tracing::warn!(key, "config change needs a daemon restart to take effect");
            }
            if new.logging.level != settings.logging.level {
                logging::set_level(&new.logging.level);
            }
            let current = supervisor.config();
            // Where the daemon runs, and the cgroup roots found at start-up
            // (`socket` and `sandbox.cgroup` are restart-only).
            new.supervisor.runtime_dir = current.runtime_dir.clone();
            new.supervisor.state_dir = current.state_dir.clone();
            new.supervisor.cgroups = current.cgroups.clone();
            supervisor.reconfigure(new.supervisor.clone());
            let report = apply_hosts(supervisor, &new.hosts, false).await;
            *settings = new;
            Ok(report)
        }
    };
    // A reload that applied only part of the config says so too.
    *state
        .last_reload_error
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = match &result {
        Err(e) => Some(e.clone()),
        Ok(r) if !r.failed.is_empty() => Some(format!(
            "the config was reloaded but {} host(s) could not be applied: {}",
            r.failed.len(),
            r.failed
                .iter()
                .map(|f| format!("{}: {}", f.extension_id, f.error))
                .collect::<Vec<_>>()
                .join("; ")
        )),
        Ok(_) => None,
    };
    // Logged only now: whoever reads the log line and then asks
    // `daemon.info` sees `lastReloadError` already set.
    match &result {
        Err(e) => tracing::error!(error = %e, "config reload failed; keeping the previous config"),
        Ok(report) => tracing::info!(
            failed = report.failed.len(),
            deferred = report.deferred.len(),
            "config reloaded"
        ),
    }
    let status = status_line(supervisor);
    notify(Notice::Ready(&status));
    result
}

/// Declare the config's hosts; start the autostart ones (all of them at
/// start-up, only newly declared ones on reload). Failures are logged.
async fn apply_hosts(
    supervisor: &Arc<Supervisor>,
    hosts: &[HostConfig],
    startup: bool,
) -> rpc::methods::ReloadReport {
    use crate::supervisor::Declared;
    let mut report = rpc::methods::ReloadReport::default();
    let mut starts = tokio::task::JoinSet::new();
    for h in hosts {
        let declared = match supervisor.declare(&h.extension_id, &h.options).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(extension_id = %h.extension_id, error = %e, "cannot declare host");
                report.failed.push(rpc::methods::HostFailure {
                    extension_id: h.extension_id.clone(),
                    error: e.to_string(),
                });
                continue;
            }
        };
        if declared == Declared::Deferred {
            tracing::info!(extension_id = %h.extension_id, "an editor runs this host with its own spec: the config's declaration applies once it stops");
            report.deferred.push(h.extension_id.clone());
        }
        if h.autostart && (startup || declared == Declared::New) {
            let sup = supervisor.clone();
            let id = h.extension_id.clone();
            starts.spawn(async move {
                sup.start(&id, &Default::default()).await.err().map(|e| {
                    tracing::error!(extension_id = %id, error = %e, "autostart failed");
                    rpc::methods::HostFailure {
                        extension_id: id,
                        error: format!("autostart failed: {e}"),
                    }
                })
            });
        }
    }
    while let Some(r) = starts.join_next().await {
        if let Ok(Some(failure)) = r {
            report.failed.push(failure);
        }
    }
    report
}
