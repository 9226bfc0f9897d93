//! The host actor's loop: one `select!` over the child's exit, the IPC
//! session's events, the commands, and the deadlines (ready, channel
//! closed, backoff, stable, stop); each turn under `catch_unwind`. Also the
//! transitions that follow an exit, a backoff, a stable run or a judged
//! failure. Starting is in `start.rs`, what follows an exit in `exit.rs`,
//! stopping in `stop.rs`.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::handle::{ActorParts, Command};
use super::stop::{Leftovers, Stopping};
use crate::ipc::{self, SessionEvent, SessionHandle};
use crate::protocol::{HostStatus, LastExit, RestartBudget};
use crate::spawn::{self, Containment, HostProcess};
use crate::state::{self, HostState, Input};
use crate::supervisor::budget::{Budget, Event as BudgetEvent};
use crate::supervisor::events::{EventBus, Failure, LiveStatus};
use crate::supervisor::logs::SharedLogRing;
use crate::supervisor::messages::MessageHub;
use crate::supervisor::records::Records;
use crate::supervisor::{
    Declared, HostSpec, Registry, SupervisorConfig, SupervisorError, build_spec,
};

/// How long a host that closed its IPC channel may keep running before it is
/// treated as failed (normally its exit follows within milliseconds).
const CHANNEL_CLOSE_GRACE: Duration = Duration::from_secs(1);

pub(super) struct HostActor {
    pub(super) id: Arc<str>,
    instance: u64,
    pub(super) spec: HostSpec,
    /// The current settings; read at each use, so a reload applies to later starts.
    config: watch::Receiver<Arc<SupervisorConfig>>,
    pub(super) bus: Arc<EventBus>,
    registry: Weak<Registry>,
    force_kill: watch::Receiver<bool>,
    pub(super) messages: Arc<MessageHub>,
    pub(super) spawner: Arc<spawn::Spawner>,
    pub(super) records: Option<Arc<Records>>,
    /// Removes released cgroups off this actor's path.
    pub(super) cleanup: spawn::Cleanup,
    rx: mpsc::Receiver<Command>,
    pub(super) logs: SharedLogRing,
    /// Shared with the handle so requests bypass the actor.
    session_slot: Arc<Mutex<Option<SessionHandle>>>,
    session: Option<SessionHandle>,
    pub(super) counters: Arc<ipc::Counters>,
    /// The spec is an editor's (`host.start` with its own), not the config's.
    spec_from_editor: bool,
    /// A config declaration waiting for the editor's host to stop.
    deferred: Option<HostSpec>,
    /// Why the current process was judged failed (not ready, unresponsive,
    /// bad frame), for the reason of what follows its exit.
    pub(super) failure: Option<Failure>,
    /// Sessions report here, tagged with their process generation.
    pub(super) ipc_tx: mpsc::Sender<(u64, SessionEvent)>,
    ipc_rx: mpsc::Receiver<(u64, SessionEvent)>,
    pub(super) ready_at: Option<SystemTime>,
    /// Kill the host if it is not ready by then.
    pub(super) ready_deadline: Option<Instant>,
    /// The host closed its channel: fail it if it is still running by then.
    channel_closed_at: Option<Instant>,

    pub(super) state: HostState,
    pub(super) generation: u64,
    /// Automatic restarts performed over the host's life.
    pub(super) restart_count: u64,
    /// Restart budget used since the last reset.
    pub(super) attempts_used: u32,
    pub(super) child: Option<HostProcess>,
    pub(super) pid: Option<u32>,
    /// The process group and cgroups of the current process, kept until
    /// they are known to be empty.
    pub(super) contained: Option<Containment>,
    /// What earlier processes left that outlived SIGKILL.
    pub(super) leftovers: Leftovers,
    pub(super) started: Option<(SystemTime, Instant)>,
    pub(super) last_exit: Option<LastExit>,
    pub(super) node: Option<String>,
    pub(super) restart_at: Option<(Instant, SystemTime)>,
    pub(super) stable_at: Option<Instant>,
    pub(super) stop: Option<Stopping>,
}

pub(super) async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn wait_opt(child: &mut Option<HostProcess>) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

impl HostActor {
    pub(super) fn new(
        parts: ActorParts,
        rx: mpsc::Receiver<Command>,
        logs: SharedLogRing,
        session_slot: Arc<Mutex<Option<SessionHandle>>>,
        counters: Arc<ipc::Counters>,
    ) -> Self {
        let (ipc_tx, ipc_rx) = mpsc::channel(8);
        HostActor {
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
            cleanup: parts.cleanup,
            rx,
            logs,
            session_slot,
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
            contained: None,
            leftovers: Leftovers::default(),
            started: None,
            last_exit: None,
            node: None,
            restart_at: None,
            stable_at: None,
            stop: None,
        }
    }

    /// Register the initial `stopped` status and run the actor's task.
    pub(super) fn spawn(self) {
        self.bus.set_status(self.live());
        tokio::spawn(self.run());
    }

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
        self.release_contained();
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
            self.live(),
            format!("internal error: {what} (processes killed)"),
        );
    }

    /// One wake-up of the actor; `false` when it is done.
    async fn turn(&mut self) -> bool {
        {
            let stop_at = self.stop.as_ref().and_then(Stopping::next_deadline);
            // Biased, in this order: an exit is handled before anything
            // else due in the same wake-up (a daemon frozen by SIGSTOP wakes
            // with the exit and the stable timer both due: the timer must
            // not restore the budget of a process that is gone), session
            // events before the ready deadline, commands before timers.
            tokio::select! {
                biased;
                res = wait_opt(&mut self.child) => {
                    self.on_exit(res);
                    // A stopping host's leader is gone: see at once
                    // whether anything is left, not a wake-up later.
                    if self.stop.as_ref().is_some_and(|s| s.poll_at.is_some()) {
                        self.on_stop_timer().await;
                    }
                }
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
                    self.fail(Failure::NotReady { ms });
                }
                () = sleep_opt(self.channel_closed_at) => {
                    self.channel_closed_at = None;
                    self.fail(Failure::ChannelClosed);
                }
                () = sleep_opt(self.restart_at.map(|r| r.0)) => self.on_backoff_elapsed().await,
                () = sleep_opt(self.stable_at) => self.on_stable(),
                () = sleep_opt(stop_at) => self.on_stop_timer().await,
                r = Stopping::emptied(&mut self.stop) => self.on_cgroup_emptied(r),
                () = sleep_opt(self.leftovers.check_at) => self.on_leftovers_check(),
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
                        Declared::Deferred
                    } else {
                        self.spec = spec;
                        self.spec_from_editor = false;
                        self.deferred = None;
                        self.bus.set_status(self.live());
                        Declared::Updated
                    }
                });
                let _ = reply.send(r);
            }
            Command::Usage(reply) => {
                #[cfg(debug_assertions)]
                test_hook_panic(&self.id);
                // The read (a /proc scan) runs on a blocking thread, which
                // answers; the actor goes on at once.
                let probe = self.contained.as_ref().map(Containment::usage_probe);
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

    pub(super) fn settings(&self) -> Arc<SupervisorConfig> {
        self.config.borrow().clone()
    }

    pub(super) fn invalid(&self) -> SupervisorError {
        SupervisorError::InvalidTransition {
            extension_id: self.id.to_string(),
            state: self.state,
        }
    }

    pub(super) fn status(&self) -> HostStatus {
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
            leftover_pids: self.leftovers.pids.clone(),
        }
    }

    /// The status for the event bus, with the instant the process started.
    pub(super) fn live(&self) -> LiveStatus {
        LiveStatus {
            status: self.status(),
            started: self.started.map(|s| s.1.into_std()),
        }
    }

    /// Apply `input`; publish the transition if the state changed.
    pub(super) fn apply(&mut self, input: Input, reason: impl Into<String>) -> bool {
        self.apply_failed(input, reason, None)
    }

    /// Apply `input`, a judged `failure` if it is one; publish the
    /// transition (with the failure, for in-process waiters) if the state
    /// changed.
    fn apply_failed(
        &mut self,
        input: Input,
        reason: impl Into<String>,
        failure: Option<Failure>,
    ) -> bool {
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
                self.bus
                    .transition_failed(from, self.live(), reason, failure);
                true
            }
            Err(e) => {
                tracing::error!(extension_id = %self.id, error = %e, "rejected state transition");
                false
            }
        }
    }

    /// The daemon waits for this host's IPC handshake (and only counts it
    /// stable once ready).
    pub(super) fn ready_required(&self) -> bool {
        !self.spec.ipc.ready_timeout.is_zero()
    }

    pub(super) fn set_session(&mut self, session: Option<SessionHandle>) {
        *self.session_slot.lock().unwrap_or_else(|p| p.into_inner()) = session.clone();
        self.session = session;
    }

    /// The process's channel is over: pending relays fail at once.
    pub(super) fn end_session(&mut self, reason: &str) {
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
                self.bus.ready(self.live());
            }
            SessionEvent::Failed(reason) => self.fail(Failure::Session(reason)),
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
    fn fail(&mut self, failure: Failure) {
        if self.state != HostState::Running {
            return;
        }
        let reason = failure.to_string();
        tracing::warn!(extension_id = %self.id, %reason, "host failed; killing it");
        self.end_session(&reason);
        self.stable_at = None;
        self.failure = Some(failure.clone());
        self.apply_failed(Input::Failed, reason, Some(failure));
        self.kill_tree();
    }

    fn remove_self(&mut self) {
        // Its IPC directory (at rest, no socket in it is in use). Windows
        // pipes have no directory.
        ipc::transport::remove_host_dir(&self.settings().runtime_dir, &self.id);
        self.leftovers.release(&self.cleanup);
        self.bus.removed(self.live());
        if let Some(reg) = self.registry.upgrade() {
            reg.remove_instance(&self.id, self.instance);
        }
        tracing::info!(extension_id = %self.id, "host removed");
    }
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
