//! One actor per host: the only owner of the host's child process, state
//! machine and timers.
//!
//! The actor never blocks on a stop or a backoff: both are deadlines in its
//! `select!` loop, so it keeps answering commands while a host is stopping
//! (a second stop joins the first; a start is refused with the state).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::budget::{AfterFailure, Budget, Event as BudgetEvent};
use super::events::EventBus;
use super::logs::{LogLine, LogRing, SharedLogRing, Stream};
use super::messages::MessageHub;
use super::{
    HostSpec, HostStatus, LastExit, Registry, RestartBudget, StartRequest, SupervisorConfig,
    SupervisorError, build_spec,
};
use crate::ipc::{self, SessionConfig, SessionEvent, SessionHandle, SessionParts};
use crate::spawn::SpawnError;
use crate::spawn::{self, ExitOutcome, LaunchSpec, StopSignal};
use crate::state::{self, HostState, Input};

/// Commands queued per host before senders wait.
const COMMAND_QUEUE: usize = 32;
/// How often a stopping host's process group is checked once its leader is
/// gone. There is no event for "the last grandchild died" without cgroups.
const GROUP_POLL: Duration = Duration::from_millis(5);
/// With cgroup events, the poll is only a safety net.
#[cfg(target_os = "linux")]
const GROUP_POLL_BACKUP: Duration = Duration::from_millis(250);
/// How long after SIGKILL a group may take to empty before the stop gives up
/// waiting (and says so in the log).
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long a host that closed its IPC channel may keep running before it is
/// treated as failed (normally its exit follows within milliseconds).
const CHANNEL_CLOSE_GRACE: Duration = Duration::from_secs(1);

type Reply<T> = oneshot::Sender<Result<T, SupervisorError>>;

enum Command {
    Start(Box<StartRequest>, Reply<HostStatus>),
    Stop(Option<Duration>, Reply<HostStatus>),
    Restart(Reply<HostStatus>),
    Remove(Reply<()>),
    /// Replace the spec used by the next start (config reload).
    Declare(Box<StartRequest>, Reply<super::Declared>),
    /// What the host's processes use now (`None` when none runs).
    Usage(Reply<Option<spawn::GroupUsage>>),
}

/// A cheap, cloneable way to reach a host's actor.
#[derive(Clone)]
pub struct HostHandle {
    tx: mpsc::Sender<Command>,
    logs: SharedLogRing,
    /// The current process's IPC session, for relaying without the actor.
    session: Arc<Mutex<Option<SessionHandle>>>,
    /// What the host's IPC channels have seen, over all its processes.
    counters: Arc<ipc::Counters>,
    /// Distinguishes this actor from a later one with the same id.
    pub instance: u64,
}

impl HostHandle {
    /// `None` when the actor is gone (the host was removed meanwhile).
    async fn ask<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Option<Result<T, SupervisorError>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn start(&self, req: StartRequest) -> Option<Result<HostStatus, SupervisorError>> {
        self.ask(|r| Command::Start(Box::new(req), r)).await
    }

    pub async fn stop(
        &self,
        timeout: Option<Duration>,
    ) -> Option<Result<HostStatus, SupervisorError>> {
        self.ask(|r| Command::Stop(timeout, r)).await
    }

    pub async fn restart(&self) -> Option<Result<HostStatus, SupervisorError>> {
        self.ask(Command::Restart).await
    }

    pub async fn remove(&self) -> Option<Result<(), SupervisorError>> {
        self.ask(Command::Remove).await
    }

    pub async fn declare(
        &self,
        req: StartRequest,
    ) -> Option<Result<super::Declared, SupervisorError>> {
        self.ask(|r| Command::Declare(Box::new(req), r)).await
    }

    pub async fn usage(&self) -> Option<Result<Option<spawn::GroupUsage>, SupervisorError>> {
        self.ask(Command::Usage).await
    }

    pub fn ipc_counts(&self) -> ipc::IpcCounts {
        self.counters.snapshot()
    }

    pub fn logs(&self, n: usize) -> Vec<LogLine> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).tail(n)
    }

    /// The IPC session of the current process, if it is ready.
    pub fn session(&self) -> Option<SessionHandle> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(SessionHandle::is_ready)
    }

    /// The newest `n` lines, then every new one.
    pub fn follow_logs(
        &self,
        n: usize,
    ) -> (
        Vec<Arc<LogLine>>,
        tokio::sync::broadcast::Receiver<Arc<LogLine>>,
    ) {
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .follow(n)
    }
}

/// What an actor is built from.
pub struct ActorParts {
    pub id: Arc<str>,
    pub instance: u64,
    pub spec: HostSpec,
    pub config: watch::Receiver<Arc<SupervisorConfig>>,
    pub bus: Arc<EventBus>,
    pub registry: Weak<Registry>,
    pub force_kill: watch::Receiver<bool>,
    pub messages: Arc<MessageHub>,
    pub spawner: Arc<crate::spawn::Spawner>,
    pub records: Option<Arc<super::records::Records>>,
}

/// Start the actor task; it registers its initial `stopped` status.
pub fn spawn_actor(parts: ActorParts) -> HostHandle {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let logs = Arc::new(Mutex::new(LogRing::new(parts.config.borrow().log_lines)));
    let session = Arc::new(Mutex::new(None));
    let counters = Arc::new(ipc::Counters::default());
    let handle = HostHandle {
        tx,
        logs: logs.clone(),
        session: session.clone(),
        counters: counters.clone(),
        instance: parts.instance,
    };
    let (ipc_tx, ipc_rx) = mpsc::channel(8);
    let actor = HostActor {
        id: parts.id,
        instance: parts.instance,
        spec: parts.spec,
        config: parts.config,
        bus: parts.bus,
        registry: parts.registry,
        force_kill: parts.force_kill,
        messages: parts.messages,
        spawner: parts.spawner,
        records: parts.records,
        rx,
        logs,
        session_slot: session,
        session: None,
        counters,
        spec_from_editor: false,
        deferred: None,
        failure: None,
        ipc_tx,
        ipc_rx,
        ready_at: None,
        ready_deadline: None,
        channel_closed_at: None,
        state: HostState::Stopped,
        generation: 0,
        restart_count: 0,
        attempts_used: 0,
        child: None,
        pid: None,
        group: None,
        #[cfg(target_os = "linux")]
        cgroup: None,
        #[cfg(target_os = "linux")]
        v1_cgroups: Vec::new(),
        started: None,
        last_exit: None,
        node: None,
        restart_at: None,
        stable_at: None,
        stop: None,
    };
    actor.bus.set_status(actor.status());
    tokio::spawn(actor.run());
    handle
}

/// A stop in progress.
struct Stopping {
    /// SIGKILL the group at this time (cleared once sent).
    kill_at: Option<Instant>,
    /// Give up waiting for the group at this time (set when SIGKILL is sent).
    give_up_at: Option<Instant>,
    /// Check whether the group is empty at this time.
    poll_at: Option<Instant>,
    /// With a cgroup2 cgroup: resolves when it empties (inotify on
    /// `cgroup.events`), so the poll above is only a safety net.
    emptied: Option<std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>>,
    /// inotify failed once: poll for the rest of this stop.
    no_events: bool,
    waiters: Vec<Reply<HostStatus>>,
    /// `host.restart` calls to answer by starting again once stopped.
    restarts: Vec<Reply<HostStatus>>,
}

struct HostActor {
    id: Arc<str>,
    instance: u64,
    spec: HostSpec,
    /// The current settings; read at each use, so a reload applies to later starts.
    config: watch::Receiver<Arc<SupervisorConfig>>,
    bus: Arc<EventBus>,
    registry: Weak<Registry>,
    force_kill: watch::Receiver<bool>,
    messages: Arc<MessageHub>,
    spawner: Arc<crate::spawn::Spawner>,
    records: Option<Arc<super::records::Records>>,
    rx: mpsc::Receiver<Command>,
    logs: SharedLogRing,
    /// Shared with the handle so requests bypass the actor.
    session_slot: Arc<Mutex<Option<SessionHandle>>>,
    session: Option<SessionHandle>,
    counters: Arc<ipc::Counters>,
    /// The spec is an editor's (`host.start` with its own), not the config's.
    spec_from_editor: bool,
    /// A config declaration waiting for the editor's host to stop.
    deferred: Option<HostSpec>,
    /// Why the current process was judged failed (not ready, unresponsive,
    /// bad frame), for the reason of what follows its exit.
    failure: Option<String>,
    /// Sessions report here, tagged with their process generation.
    ipc_tx: mpsc::Sender<(u64, SessionEvent)>,
    ipc_rx: mpsc::Receiver<(u64, SessionEvent)>,
    ready_at: Option<SystemTime>,
    /// Kill the host if it is not ready by then.
    ready_deadline: Option<Instant>,
    /// The host closed its channel: fail it if it is still running by then.
    channel_closed_at: Option<Instant>,

    state: HostState,
    generation: u64,
    /// Automatic restarts performed over the host's life.
    restart_count: u64,
    /// Restart budget used since the last reset.
    attempts_used: u32,
    child: Option<Child>,
    pid: Option<u32>,
    /// The host's process group (a Job Object on Windows), kept until it is
    /// known to be empty.
    group: Option<spawn::ProcessGroup>,
    /// The host process's cgroup, when cgroups are in use.
    #[cfg(target_os = "linux")]
    cgroup: Option<crate::cgroup::HostCgroup>,
    /// Its cgroups in v1 hierarchies, one per limit that needs one.
    #[cfg(target_os = "linux")]
    v1_cgroups: Vec<crate::cgroup::CgroupV1>,
    started: Option<(SystemTime, Instant)>,
    last_exit: Option<LastExit>,
    node: Option<String>,
    restart_at: Option<(Instant, SystemTime)>,
    stable_at: Option<Instant>,
    stop: Option<Stopping>,
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn wait_opt(child: &mut Option<Child>) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

async fn emptied_opt(stop: &mut Option<Stopping>) -> std::io::Result<()> {
    match stop.as_mut().and_then(|s| s.emptied.as_mut()) {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Earliest of the optional deadlines.
fn earliest(times: &[Option<Instant>]) -> Option<Instant> {
    times.iter().flatten().min().copied()
}

impl HostActor {
    /// Turn after turn until the actor is done. A panic in a turn is caught:
    /// the host's processes are killed, it turns `crashed` with the panic as
    /// the reason, and the actor goes on (its handle stays valid, the id
    /// usable). Never a host stuck with its processes unsupervised.
    async fn run(mut self) {
        use futures_util::FutureExt;
        loop {
            match std::panic::AssertUnwindSafe(self.turn())
                .catch_unwind()
                .await
            {
                Ok(true) => {}
                Ok(false) => return,
                Err(panic) => self.on_panic(panic),
            }
        }
    }

    fn on_panic(&mut self, panic: Box<dyn std::any::Any + Send>) {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        tracing::error!(extension_id = %self.id, panic = %what, "internal error in the host's actor; killing its processes");
        self.kill_tree();
        self.end_session("internal error");
        self.child = None;
        self.pid = None;
        self.started = None;
        self.group = None;
        self.release_cgroup();
        if let Some(r) = &self.records {
            r.down(&self.id);
        }
        self.restart_at = None;
        self.stable_at = None;
        if let Some(stop) = self.stop.take() {
            for w in stop.waiters.into_iter().chain(stop.restarts) {
                let _ = w.send(Err(self.invalid()));
            }
        }
        let from = self.state;
        self.state = HostState::Crashed;
        self.bus.transition(
            from,
            self.status(),
            format!("internal error: {what} (processes killed)"),
        );
    }

    /// One wake-up of the actor; `false` when it is done.
    async fn turn(&mut self) -> bool {
        {
            let stop_at = self
                .stop
                .as_ref()
                .and_then(|s| earliest(&[s.kill_at, s.give_up_at, s.poll_at]));
            // Biased, in this order: an exit is handled before anything
            // else due in the same wake-up (a daemon frozen by SIGSTOP wakes
            // with the exit and the stable timer both due: the timer must
            // not restore the budget of a process that is gone), session
            // events before the ready deadline, commands before timers.
            tokio::select! {
                biased;
                res = wait_opt(&mut self.child) => self.on_exit(res),
                Some((generation, ev)) = self.ipc_rx.recv() => self.on_ipc(generation, ev),
                cmd = self.rx.recv() => match cmd {
                    Some(Command::Remove(reply)) => {
                        if self.state.is_at_rest() {
                            self.remove_self();
                            let _ = reply.send(Ok(()));
                            return false;
                        }
                        let _ = reply.send(Err(self.invalid()));
                    }
                    Some(cmd) => self.handle(cmd).await,
                    None => {
                        // Every handle is gone: never leave a process behind.
                        self.kill_tree();
                        return false;
                    }
                },
                () = sleep_opt(self.ready_deadline) => {
                    self.ready_deadline = None;
                    let ms = crate::time::millis(self.spec.ipc.ready_timeout);
                    self.fail(&format!("not ready within {ms} ms"));
                }
                () = sleep_opt(self.channel_closed_at) => {
                    self.channel_closed_at = None;
                    self.fail("closed its IPC channel but kept running");
                }
                () = sleep_opt(self.restart_at.map(|r| r.0)) => self.on_backoff_elapsed().await,
                () = sleep_opt(self.stable_at) => self.on_stable(),
                () = sleep_opt(stop_at) => self.on_stop_timer().await,
                r = emptied_opt(&mut self.stop) => self.on_cgroup_emptied(r),
                Ok(()) = self.force_kill.changed() => {
                    if *self.force_kill.borrow_and_update() {
                        self.kill_now();
                    }
                }
            }
        }
        true
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Start(req, reply) => {
                let config = self.settings();
                let r = match build_spec(&config, &req, Some(&self.spec)) {
                    Err(e) => Err(e),
                    Ok(_) if !self.state.is_at_rest() => Err(self.invalid()),
                    Ok(spec) => {
                        if req.entry.is_some() {
                            // A whole spec of its own (an editor's): a
                            // config declaration of this id waits until the
                            // host stops. A start by id keeps the origin.
                            self.spec_from_editor = true;
                            self.deferred = None;
                        }
                        self.spec = spec;
                        self.attempts_used = 0;
                        self.start("start requested").await
                    }
                };
                let _ = reply.send(r);
            }
            Command::Stop(timeout, reply) => self.request_stop(timeout, reply).await,
            Command::Restart(reply) => match self.state {
                HostState::Stopped | HostState::Crashed | HostState::Restarting => {
                    self.restart_at = None;
                    self.attempts_used = 0;
                    let _ = reply.send(self.start("restart requested").await);
                }
                HostState::Stopping => {
                    if let Some(s) = &mut self.stop {
                        s.restarts.push(reply);
                    }
                }
                _ => {
                    let (tx, _rx) = oneshot::channel();
                    self.request_stop(None, tx).await;
                    if let Some(s) = &mut self.stop {
                        s.restarts.push(reply);
                    } else {
                        // The stop completed at once (nothing was running).
                        self.attempts_used = 0;
                        let _ = reply.send(self.start("restart requested").await);
                    }
                }
            },
            Command::Declare(req, reply) => {
                let config = self.settings();
                let r = build_spec(&config, &req, None).map(|spec| {
                    if self.spec_from_editor && !self.state.is_at_rest() {
                        // The editor's spec stays until its host stops.
                        self.deferred = Some(spec);
                        super::Declared::Deferred
                    } else {
                        self.spec = spec;
                        self.spec_from_editor = false;
                        self.deferred = None;
                        self.bus.set_status(self.status());
                        super::Declared::Updated
                    }
                });
                let _ = reply.send(r);
            }
            Command::Usage(reply) => {
                #[cfg(debug_assertions)]
                test_hook_panic(&self.id);
                // The read (a /proc scan) runs on a blocking thread, which
                // answers; the actor goes on at once.
                let probe = self.group.as_ref().map(|g| g.usage_probe());
                let id = self.id.clone();
                tokio::task::spawn_blocking(move || {
                    let usage = probe.and_then(|p| match p.and_then(spawn::UsageProbe::read) {
                        Ok(u) => Some(u),
                        Err(e) => {
                            tracing::warn!(extension_id = %id, error = %e, "cannot read the host's usage");
                            None
                        }
                    });
                    let _ = reply.send(Ok(usage));
                });
            }
            Command::Remove(_) => unreachable!("handled in run"),
        }
    }

    fn settings(&self) -> Arc<SupervisorConfig> {
        self.config.borrow().clone()
    }

    fn invalid(&self) -> SupervisorError {
        SupervisorError::InvalidTransition {
            extension_id: self.id.to_string(),
            state: self.state,
        }
    }

    fn status(&self) -> HostStatus {
        let max = self.spec.restart.max_attempts;
        HostStatus {
            extension_id: self.id.to_string(),
            state: self.state,
            pid: self.pid,
            generation: self.generation,
            restart_count: self.restart_count,
            restart_budget: RestartBudget {
                max_attempts: max,
                attempts_left: max.saturating_sub(self.attempts_used),
            },
            next_restart_at: self.restart_at.map(|r| crate::time::rfc3339(r.1)),
            started_at: self.started.map(|s| crate::time::rfc3339(s.0)),
            uptime_ms: self.started.map(|s| crate::time::millis(s.1.elapsed())),
            last_exit: self.last_exit.clone(),
            entry: self.spec.entry.display().to_string(),
            node: self.node.clone(),
            ready: self.ready_at.is_some(),
            ready_at: self.ready_at.map(crate::time::rfc3339),
            memory_max_mb: self.spec.memory_max(&self.settings()).map(|b| b >> 20),
            cpu_max_percent: self.spec.cpu_max_percent(&self.settings()),
            started_instant: self.started.map(|s| s.1.into_std()),
        }
    }

    /// Apply `input`; publish the transition if the state changed.
    fn apply(&mut self, input: Input, reason: impl Into<String>) -> bool {
        match state::step(self.state, input) {
            Ok(to) if to == self.state => false,
            Ok(to) => {
                let from = self.state;
                self.state = to;
                if to.is_at_rest()
                    && let Some(spec) = self.deferred.take()
                {
                    // The editor's host stopped: the config's declaration
                    // of this id applies from its next start.
                    tracing::info!(extension_id = %self.id, "the config's declaration of this host applies now");
                    self.spec = spec;
                    self.spec_from_editor = false;
                }
                let reason = reason.into();
                tracing::info!(extension_id = %self.id, %from, %to, %reason, "state change");
                self.bus.transition(from, self.status(), reason);
                true
            }
            Err(e) => {
                tracing::error!(extension_id = %self.id, error = %e, "rejected state transition");
                false
            }
        }
    }

    /// From `stopped`, `crashed` or `restarting`: go through `starting` to
    /// `running`, or to `crashed` if the spawn fails.
    async fn start(&mut self, reason: &str) -> Result<HostStatus, SupervisorError> {
        self.restart_at = None;
        if !self.apply(Input::Start, reason) {
            return Err(self.invalid());
        }
        self.spawn_in_starting().await
    }

    /// Resolve Node, then the blocking half on a blocking thread (IPC
    /// socket, verification, private dirs, cgroups), then fork on the
    /// spawner thread. The actor's own thread never blocks on any of it.
    async fn prepare_and_spawn(
        &mut self,
        config: &Arc<SupervisorConfig>,
    ) -> Result<(spawn::Spawned, ipc::Prepared), SpawnError> {
        let node = spawn::resolve_node(
            config.node.as_deref(),
            config.exe_dir.as_deref(),
            config.resource_path.as_deref(),
        )?;
        self.node = Some(node.display().to_string());
        let (id, spec, cfg) = (self.id.clone(), self.spec.clone(), config.clone());
        let gone = |e: tokio::task::JoinError| SpawnError::Exec {
            path: node.clone(),
            source: Arc::new(std::io::Error::other(e)),
        };
        // A start storm must not become a thread storm: at most two
        // preparations at a time (the host has two cores' worth of work to
        // give them), on reused blocking threads.
        static PREPARING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
        let turn = PREPARING.acquire().await.expect("never closed");
        let p = tokio::task::spawn_blocking({
            let node = node.clone();
            move || prepare(&id, &spec, &cfg, node)
        })
        .await
        .map_err(gone)??;
        drop(turn);
        #[cfg(target_os = "linux")]
        {
            self.cgroup = p.cgroup;
            self.v1_cgroups = p.v1_cgroups;
        }
        Ok((self.spawner.spawn(p.launch).await?, p.ipc))
    }

    async fn spawn_in_starting(&mut self) -> Result<HostStatus, SupervisorError> {
        let config = self.settings();
        let spawned = self.prepare_and_spawn(&config).await;
        match spawned {
            Ok((mut s, mut prepared)) => {
                prepared.expect_group(s.group.id());
                self.generation += 1;
                self.pid = Some(s.pid);
                if let Some(r) = &self.records {
                    r.up(&self.id, s.pid, s.group.id(), self.cgroup_dir());
                }
                self.group = Some(s.group);
                self.started = Some((SystemTime::now(), Instant::now()));
                self.failure = None;
                self.stable_at =
                    Budget::arms_stable_timer(BudgetEvent::Spawned, self.ready_required())
                        .then(|| Instant::now() + self.spec.restart.stable_after);
                let max = config.log_line_bytes;
                // One budget for both pipes of this process.
                let limiter = Arc::new(Mutex::new(super::logs::Limiter::new(
                    self.spec.log_rate(&config),
                )));
                if let Some(out) = s.child.stdout.take() {
                    tokio::spawn(super::logs::pump(
                        out,
                        Stream::Stdout,
                        self.id.clone(),
                        self.logs.clone(),
                        max,
                        limiter.clone(),
                    ));
                }
                if let Some(err) = s.child.stderr.take() {
                    tokio::spawn(super::logs::pump(
                        err,
                        Stream::Stderr,
                        self.id.clone(),
                        self.logs.clone(),
                        max,
                        limiter,
                    ));
                }
                self.child = Some(s.child);
                let ipc = self.spec.ipc;
                let answers = super::answers::LocalAnswers {
                    hub: self.messages.clone(),
                    counters: self.counters.clone(),
                    extensions_dir: self.spec.extensions_dir.clone(),
                    storage_dir: self.spec.storage_root(&self.id, &config),
                    statics: self.spec.static_answers(&config),
                    owner: config.run_as,
                };
                let session = ipc::start(
                    prepared,
                    SessionParts {
                        config: SessionConfig {
                            max_frame: ipc.max_frame,
                            heartbeat_interval: ipc.heartbeat_interval,
                            heartbeat_timeout: ipc.heartbeat_timeout,
                        },
                        extension_id: self.id.clone(),
                        generation: self.generation,
                        events: self.ipc_tx.clone(),
                        requests: Arc::new(answers),
                        counters: self.counters.clone(),
                    },
                );
                self.set_session(Some(session));
                self.ready_at = None;
                self.ready_deadline =
                    (!ipc.ready_timeout.is_zero()).then(|| Instant::now() + ipc.ready_timeout);
                self.apply(Input::Spawned, format!("spawned pid {}", s.pid));
                Ok(self.status())
            }
            Err(e) => {
                tracing::error!(extension_id = %self.id, error = %e, "spawn failed");
                self.apply(Input::SpawnFailed, format!("spawn failed: {e}"));
                Err(SupervisorError::Spawn {
                    extension_id: self.id.to_string(),
                    source: e,
                })
            }
        }
    }

    fn on_exit(&mut self, res: std::io::Result<std::process::ExitStatus>) {
        let outcome = match res {
            Ok(status) => ExitOutcome::from(status),
            Err(e) => {
                tracing::error!(extension_id = %self.id, error = %e, "waiting for the host failed");
                ExitOutcome {
                    code: None,
                    signal: None,
                }
            }
        };
        self.child = None;
        self.pid = None;
        self.started = None;
        self.stable_at = None;
        self.end_session("the host exited");
        self.last_exit = Some(LastExit {
            code: outcome.code,
            signal: outcome.signal,
            at: crate::time::rfc3339_now(),
        });
        if self.state == HostState::Stopping {
            if let Some(s) = &mut self.stop {
                s.poll_at = Some(Instant::now());
            }
            return;
        }
        // Unrequested exit: the group's (and cgroup's) leftovers go with it.
        self.kill_tree();
        self.group = None;
        self.release_cgroup();
        if let Some(r) = &self.records {
            r.down(&self.id);
        }
        match self.state {
            HostState::Running => {
                tracing::warn!(extension_id = %self.id, "{outcome}");
                self.apply(Input::ExitedUnexpectedly, outcome.to_string());
            }
            // Already judged failed (see `fail`): this is the kill landing.
            HostState::Unhealthy => {}
            other => {
                tracing::error!(extension_id = %self.id, state = %other, "{outcome} in an unexpected state");
                return;
            }
        }
        let policy = self.spec.restart;
        let cause = self.failure.take().unwrap_or_else(|| outcome.to_string());
        let mut budget = self.budget();
        match budget.on_failure() {
            AfterFailure::Restart { attempt } => {
                self.attempts_used = budget.used;
                let delay = policy.backoff_for(attempt);
                self.restart_at = Some((Instant::now() + delay, SystemTime::now() + delay));
                self.apply(
                    Input::RetryWithinBudget,
                    format!(
                        "restarting in {} ms (attempt {} of {})",
                        crate::time::millis(delay),
                        budget.used,
                        policy.max_attempts
                    ),
                );
            }
            AfterFailure::Exhausted => {
                self.apply(
                    Input::BudgetExhausted,
                    format!("restart budget exhausted: {cause}"),
                );
            }
        }
    }

    async fn on_backoff_elapsed(&mut self) {
        self.restart_at = None;
        if self.state != HostState::Restarting {
            return;
        }
        self.restart_count += 1;
        if self.apply(Input::BackoffElapsed, "backoff elapsed") {
            // A failure is published as `crashed`; nobody waits for this one.
            let _ = self.spawn_in_starting().await;
        }
    }

    fn on_stable(&mut self) {
        self.stable_at = None;
        // The exit may have landed in the same instant without being seen
        // yet: a process that is gone has not run stably.
        if let Some(child) = &mut self.child
            && !matches!(child.try_wait(), Ok(None))
        {
            return;
        }
        let mut budget = self.budget();
        if self.state == HostState::Running && budget.on_stable() {
            tracing::info!(extension_id = %self.id, "running stably; restart budget restored");
            self.attempts_used = budget.used;
            self.bus.set_status(self.status());
        }
    }

    fn budget(&self) -> Budget {
        Budget {
            max: self.spec.restart.max_attempts,
            used: self.attempts_used,
        }
    }

    /// The daemon waits for this host's IPC handshake (and only counts it
    /// stable once ready).
    fn ready_required(&self) -> bool {
        !self.spec.ipc.ready_timeout.is_zero()
    }

    async fn request_stop(&mut self, timeout: Option<Duration>, reply: Reply<HostStatus>) {
        match self.state {
            HostState::Stopped => {
                let _ = reply.send(Ok(self.status()));
                return;
            }
            HostState::Stopping => {
                if let Some(s) = &mut self.stop {
                    s.waiters.push(reply);
                }
                return;
            }
            _ => {}
        }
        self.restart_at = None;
        self.stable_at = None;
        self.end_session("the host is stopping");
        let timeout = timeout.unwrap_or(self.spec.stop_timeout);
        let mut stopping = Stopping {
            kill_at: None,
            give_up_at: None,
            poll_at: None,
            emptied: None,
            no_events: false,
            waiters: vec![reply],
            restarts: Vec::new(),
        };
        if let Some(group) = &self.group {
            group.signal(StopSignal::Term);
            stopping.kill_at = Some(Instant::now() + timeout);
            if self.child.is_none() {
                stopping.poll_at = Some(Instant::now());
            }
        }
        let nothing_to_wait_for = self.group.is_none();
        self.stop = Some(stopping);
        self.apply(Input::Stop, "stop requested");
        if nothing_to_wait_for {
            self.finish_stop().await;
        }
    }

    /// The host's cgroup emptied (or inotify failed): check now.
    fn on_cgroup_emptied(&mut self, r: std::io::Result<()>) {
        if let Some(s) = &mut self.stop {
            s.emptied = None;
            if let Err(e) = r {
                tracing::debug!(extension_id = %self.id, error = %e, "no cgroup events; polling the group");
                s.no_events = true;
            }
            s.poll_at = Some(Instant::now());
        }
    }

    async fn on_stop_timer(&mut self) {
        let now = Instant::now();
        let Some(s) = &self.stop else { return };
        let (kill_due, poll_due, give_up_due) = (
            s.kill_at.is_some_and(|t| t <= now),
            s.poll_at.is_some_and(|t| t <= now),
            s.give_up_at.is_some_and(|t| t <= now),
        );
        if kill_due {
            if let Some(group) = &self.group {
                tracing::warn!(extension_id = %self.id, pgid = group.id(), "stop timeout passed; sending SIGKILL to the process group");
            }
            self.kill_tree();
            if let Some(s) = &mut self.stop {
                s.kill_at = None;
                s.give_up_at = Some(now + KILL_GRACE);
            }
        }
        if poll_due {
            if let Some(s) = &mut self.stop {
                s.poll_at = None;
            }
            if self.child.is_none() {
                let group = self.group.as_ref().is_some_and(|g| g.alive());
                if !group && !self.cgroup_populated() {
                    self.finish_stop().await;
                    return;
                }
                if !group {
                    // Only processes that left the group (setsid) remain,
                    // and they never saw the SIGTERM: kill them.
                    self.kill_tree();
                }
                if let Some(s) = &mut self.stop {
                    s.poll_at = Some(now + GROUP_POLL);
                    #[cfg(target_os = "linux")]
                    if let Some(cg) = &self.cgroup
                        && !s.no_events
                    {
                        // Every descendant is in the cgroup: its emptying
                        // is the event; the poll only backs it up.
                        if s.emptied.is_none() {
                            tracing::debug!(extension_id = %self.id, "leftovers after the leader exited; waiting for its cgroup to empty");
                            s.emptied = Some(Box::pin(cg.clone().emptied()));
                        }
                        s.poll_at = Some(now + GROUP_POLL_BACKUP);
                    }
                }
            }
        }
        if give_up_due && self.child.is_none() {
            tracing::error!(extension_id = %self.id, pgid = ?self.group.as_ref().map(|g| g.id()), "process group still not empty after SIGKILL; giving up waiting");
            self.finish_stop().await;
        }
    }

    /// The second SIGINT of a shutdown: SIGKILL the group now.
    fn kill_now(&mut self) {
        if self.stop.is_some() {
            self.kill_tree();
        }
        if let Some(s) = &mut self.stop {
            s.kill_at = None;
            s.give_up_at = Some(Instant::now() + KILL_GRACE);
        }
    }

    /// SIGKILL the host's process group and, where there is one, its cgroup
    /// (which also holds descendants that left the group).
    fn kill_tree(&self) {
        if let Some(group) = &self.group {
            group.signal(StopSignal::Kill);
        }
        #[cfg(target_os = "linux")]
        if let Some(cg) = &self.cgroup {
            cg.kill();
        }
    }

    fn cgroup_populated(&self) -> bool {
        #[cfg(target_os = "linux")]
        if let Some(cg) = &self.cgroup {
            use crate::cgroup::Cgroup as _;
            return cg.populated();
        }
        false
    }

    fn cgroup_dir(&self) -> Option<std::path::PathBuf> {
        #[cfg(target_os = "linux")]
        if let Some(cg) = &self.cgroup {
            return Some(cg.dir.clone());
        }
        None
    }

    /// Remove the process's cgroup once it is empty (in the background: a
    /// SIGKILL just sent takes a moment to land).
    fn release_cgroup(&mut self) {
        #[cfg(target_os = "linux")]
        {
            if let Some(cg) = self.cgroup.take() {
                // cgroup2 says when it empties; v1 cgroups are polled.
                tokio::spawn(async move {
                    use crate::cgroup::Cgroup as _;
                    match tokio::time::timeout(KILL_GRACE, cg.clone().emptied()).await {
                        Ok(Ok(())) => cg.remove(),
                        Ok(Err(_)) => remove_when_empty(cg),
                        Err(_) => {
                            tracing::warn!(cgroup = %cg.dir.display(), "cgroup still populated; left in place")
                        }
                    }
                });
            }
            for cg in self.v1_cgroups.drain(..) {
                remove_when_empty(cg);
            }
        }
    }

    async fn finish_stop(&mut self) {
        self.group = None;
        self.release_cgroup();
        if let Some(r) = &self.records {
            r.down(&self.id);
        }
        let reason = match &self.last_exit {
            Some(e) if self.generation > 0 => format!(
                "stopped ({})",
                ExitOutcome {
                    code: e.code,
                    signal: e.signal
                }
            ),
            _ => "stopped".to_string(),
        };
        self.apply(Input::GroupGone, reason);
        let Some(stop) = self.stop.take() else { return };
        for w in stop.waiters {
            let _ = w.send(Ok(self.status()));
        }
        if !stop.restarts.is_empty() {
            self.attempts_used = 0;
            let r = self.start("restart requested").await;
            for w in stop.restarts {
                let _ = w.send(r.clone());
            }
        }
    }

    fn set_session(&mut self, session: Option<SessionHandle>) {
        *self.session_slot.lock().unwrap_or_else(|p| p.into_inner()) = session.clone();
        self.session = session;
    }

    /// The process's channel is over: pending relays fail at once.
    fn end_session(&mut self, reason: &str) {
        if let Some(s) = self.session.take() {
            s.close(reason);
        }
        self.set_session(None);
        self.messages.forget_host(&self.id);
        self.ready_at = None;
        self.ready_deadline = None;
        self.channel_closed_at = None;
    }

    fn on_ipc(&mut self, generation: u64, ev: SessionEvent) {
        if generation != self.generation || self.state != HostState::Running {
            return;
        }
        match ev {
            SessionEvent::Ready => {
                self.ready_at = Some(SystemTime::now());
                self.ready_deadline = None;
                if Budget::arms_stable_timer(BudgetEvent::Ready, self.ready_required()) {
                    self.stable_at = Some(Instant::now() + self.spec.restart.stable_after);
                }
                tracing::info!(extension_id = %self.id, "ready");
                self.bus.ready(self.status());
            }
            SessionEvent::Failed(reason) => self.fail(&reason),
            SessionEvent::Closed => {
                // Usually the process is exiting; if it is not, it has broken
                // its channel and is treated as failed.
                self.channel_closed_at = Some(Instant::now() + CHANNEL_CLOSE_GRACE);
            }
        }
    }

    /// A running host that is not ready in time, stopped answering, or broke
    /// the protocol: `running -> unhealthy` now, SIGKILL to its group, and
    /// the restart policy once the exit lands.
    fn fail(&mut self, reason: &str) {
        if self.state != HostState::Running {
            return;
        }
        tracing::warn!(extension_id = %self.id, %reason, "host failed; killing it");
        self.failure = Some(reason.to_string());
        self.end_session(reason);
        self.stable_at = None;
        self.apply(Input::Failed, reason);
        self.kill_tree();
    }

    fn remove_self(&mut self) {
        // Its IPC directory (at rest, no socket in it is in use). Windows
        // pipes have no directory.
        #[cfg(unix)]
        if let Some(dir) = ipc::ipc_paths(&self.settings().runtime_dir, &self.id)
            .0
            .parent()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
        self.bus.removed(self.status());
        if let Some(reg) = self.registry.upgrade() {
            reg.remove_instance(&self.id, self.instance);
        }
        tracing::info!(extension_id = %self.id, "host removed");
    }
}

/// Remove a cgroup once its last process is gone (a SIGKILL just sent takes
/// a moment to land), in the background.
#[cfg(target_os = "linux")]
fn remove_when_empty(cg: impl crate::cgroup::Cgroup + Send + 'static) {
    tokio::spawn(async move {
        for _ in 0..500 {
            if !cg.populated() {
                cg.remove();
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!(cgroup = %cg.dir().display(), "cgroup still populated; left in place");
    });
}

/// What the blocking half of a start produces.
struct Prepared {
    launch: LaunchSpec,
    ipc: ipc::Prepared,
    #[cfg(target_os = "linux")]
    cgroup: Option<crate::cgroup::HostCgroup>,
    #[cfg(target_os = "linux")]
    v1_cgroups: Vec<crate::cgroup::CgroupV1>,
}

/// The blocking half of a start, on a blocking thread: bind the IPC socket,
/// open and verify Node (hashing a 100 MB binary the first time), make the
/// private TMPDIR and the cgroups.
fn prepare(
    id: &str,
    spec: &HostSpec,
    config: &SupervisorConfig,
    node: std::path::PathBuf,
) -> Result<Prepared, SpawnError> {
    let (host_sock, incoming_sock) = ipc::ipc_paths(&config.runtime_dir, id);
    let ipc =
        ipc::prepare(&incoming_sock, &host_sock, config.run_as).map_err(|e| SpawnError::Exec {
            path: incoming_sock.clone(),
            source: Arc::new(e),
        })?;
    let verified = if config.node_policy.active() {
        Some(crate::verify::open_verified(
            &node,
            &config.node_policy.sha256,
        )?)
    } else {
        None
    };
    let mut launch = launch_spec(id, spec, config, node);
    launch.exec_fd = verified.map(|v| v.file);
    if let Some(user) = config.run_as {
        hand_over(id, config, user).map_err(|e| SpawnError::Exec {
            path: config.state_dir.clone().unwrap_or_default(),
            source: Arc::new(e),
        })?;
    }
    #[cfg(target_os = "linux")]
    let (cgroup, v1_cgroups) = make_cgroups(id, spec, config, &mut launch);
    #[cfg(debug_assertions)]
    test_hook_after_verify(&launch);
    Ok(Prepared {
        launch,
        ipc,
        #[cfg(target_os = "linux")]
        cgroup,
        #[cfg(target_os = "linux")]
        v1_cgroups,
    })
}

/// The child's command line, environment and sandbox policy.
fn launch_spec(
    id: &str,
    spec: &HostSpec,
    config: &SupervisorConfig,
    node: std::path::PathBuf,
) -> LaunchSpec {
    let mut env: BTreeMap<OsString, OsString> = config.base_env.clone();
    // Named explicitly by whoever started the host: past the allowlist.
    for name in &spec.pass_env {
        if let Some(v) = std::env::var_os(name) {
            env.insert(name.into(), v);
        }
    }
    for (k, v) in &spec.env {
        env.insert(k.into(), v.into());
    }
    let (outgoing, incoming) = ipc::ipc_paths(&config.runtime_dir, id);
    env.insert(
        "DSCODE_IPC_URL".into(),
        format!("ipc://{}", outgoing.display()).into(),
    );
    env.insert(
        "DSCODE_INCOMING_IPC_URL".into(),
        format!("ipc://{}", incoming.display()).into(),
    );
    if let Some(rp) = &config.resource_path {
        env.insert("DSCODE_RESOURCE_PATH".into(), rp.clone().into_os_string());
    }
    if let Some(tmp) = private_tmp(id, config) {
        env.insert("TMPDIR".into(), tmp.into_os_string());
    }
    let cwd = spec.cwd.clone().unwrap_or_else(|| {
        spec.entry
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| "/".into())
    });
    #[cfg(target_os = "linux")]
    let sandbox = {
        let mut policy = config.sandbox.clone();
        if let Some(state) = &config.state_dir {
            policy.writable.push(state.join("hosts").join(id));
        }
        if let Some(own) = outgoing.parent() {
            policy.writable.push(own.to_path_buf());
        }
        policy.writable.extend(spec.writable_paths.iter().cloned());
        if let Some(storage) = &spec.storage_dir {
            policy.writable.push(storage.clone());
        }
        // The strict profile hides the whole runtime directory: other
        // hosts' IPC directories and the control socket (a host must not
        // reach the control plane); its own IPC directory is bound back.
        policy.hidden.push(config.runtime_dir.clone());
        Some(policy)
    };
    LaunchSpec {
        node,
        node_args: config.node_args.clone(),
        entry: spec.entry.clone(),
        args: spec.args.clone(),
        cwd,
        env,
        exec_fd: None,
        #[cfg(target_os = "linux")]
        sandbox,
        #[cfg(target_os = "linux")]
        cgroup_procs: Vec::new(),
        run_as: config.run_as,
    }
}

/// With `run_as`: the host's private directories belong to its user, and the
/// directories above them (state dir, runtime dir, the IPC root) let it pass
/// (0711) without letting it list or write them. Its IPC directory and
/// socket were handed over when they were bound.
fn hand_over(id: &str, config: &SupervisorConfig, user: spawn::HostUser) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let traverse =
            |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711));
        if let Some(state) = &config.state_dir {
            let own = state.join("hosts").join(id);
            traverse(state)?;
            traverse(&state.join("hosts"))?;
            for p in [own.clone(), own.join("tmp")] {
                if p.exists() {
                    user.own(&p)?;
                }
            }
        }
        traverse(&config.runtime_dir)?;
        traverse(&ipc::transport::ipc_root(&config.runtime_dir))?;
    }
    let _ = (id, config, user);
    Ok(())
}

/// `<state>/hosts/<id>/tmp`, created 0700: the host's private TMPDIR.
fn private_tmp(id: &str, config: &SupervisorConfig) -> Option<std::path::PathBuf> {
    let dir = config
        .state_dir
        .as_ref()?
        .join("hosts")
        .join(id)
        .join("tmp");
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(&dir) {
        Ok(()) => Some(dir),
        Err(e) => {
            tracing::warn!(extension_id = %id, error = %e, dir = %dir.display(), "cannot create the host's TMPDIR");
            None
        }
    }
}

/// The host's cgroup2 cgroup (kill, tracking, and its limits where the
/// controllers are delegated) and, for each limit a v1 hierarchy must
/// enforce, its cgroup there; the child joins them all. Failures degrade to
/// the process group alone, with a warning.
#[cfg(target_os = "linux")]
fn make_cgroups(
    id: &str,
    spec: &HostSpec,
    config: &SupervisorConfig,
    launch: &mut LaunchSpec,
) -> (
    Option<crate::cgroup::HostCgroup>,
    Vec<crate::cgroup::CgroupV1>,
) {
    use crate::cgroup::{CgroupV1, HostCgroup, Limit};
    let mut pending: Vec<Limit> = [
        spec.memory_max(config).map(Limit::Memory),
        spec.cpu_max_percent(config).map(Limit::Cpu),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut cgroup = None;
    if let Some(root) = &config.cgroups.v2 {
        match HostCgroup::create(root, id) {
            Ok((cg, procs)) => {
                pending.retain(|&limit| {
                    if config.cgroups.v1(limit.controller()).is_some() {
                        return true;
                    }
                    match cg.limit(limit) {
                        Ok(()) => false,
                        Err(e) => {
                            tracing::warn!(extension_id = %id, ?limit, error = %e, "cannot write the limit to the host's cgroup");
                            true
                        }
                    }
                });
                launch.cgroup_procs.push(Arc::new(procs));
                cgroup = Some(cg);
            }
            Err(e) => {
                tracing::warn!(extension_id = %id, error = %e, "cannot create the host's cgroup; using its process group only")
            }
        }
    }
    let mut v1 = Vec::new();
    pending.retain(|&limit| {
        let Some(root) = config.cgroups.v1(limit.controller()) else {
            return true;
        };
        match CgroupV1::create(root, id, limit) {
            Ok((cg, procs)) => {
                launch.cgroup_procs.push(Arc::new(procs));
                v1.push(cg);
                false
            }
            Err(e) => {
                tracing::warn!(extension_id = %id, ?limit, error = %e, "cannot create the host's v1 cgroup");
                true
            }
        }
    });
    for limit in pending {
        tracing::warn!(extension_id = %id, ?limit, controller = limit.controller(), "limit not applied: no writable controller");
    }
    (cgroup, v1)
}

/// Test hook (debug builds only): `host.usage` of the host named by
/// `$DSCODE_HOSTD_TEST_PANIC_ON` panics in its actor, to prove a panic is
/// contained.
#[cfg(debug_assertions)]
fn test_hook_panic(id: &str) {
    if std::env::var_os("DSCODE_HOSTD_TEST_PANIC_ON").is_some_and(|v| v == id) {
        panic!("test hook: panic in the actor of {id}");
    }
}

/// Test hook (debug builds only): run `$DSCODE_HOSTD_TEST_AFTER_VERIFY` after
/// the Node binary is verified and before it is executed, so a test can swap
/// the file in that window.
#[cfg(debug_assertions)]
fn test_hook_after_verify(spec: &LaunchSpec) {
    if spec.exec_fd.is_some()
        && let Some(cmd) = std::env::var_os("DSCODE_HOSTD_TEST_AFTER_VERIFY")
    {
        let _ = std::process::Command::new(cmd).arg(&spec.node).status();
    }
}
