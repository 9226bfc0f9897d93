//! The handle to a host's actor: [`HostHandle`] (cheap to clone; commands
//! over a bounded channel, each answered on a oneshot; logs and the IPC
//! session read without the actor) and [`spawn_actor`], which starts one.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::actor::HostActor;
use crate::ipc::{self, SessionHandle};
use crate::protocol::{HostOptions, HostStatus};
use crate::spawn;
use crate::supervisor::events::EventBus;
use crate::supervisor::logs::{LogLine, LogRing, SharedLogRing};
use crate::supervisor::messages::MessageHub;
use crate::supervisor::records::Records;
use crate::supervisor::{Declared, HostSpec, Registry, SupervisorConfig, SupervisorError};

/// Commands queued per host before senders wait.
const COMMAND_QUEUE: usize = 32;

pub(super) type Reply<T> = oneshot::Sender<Result<T, SupervisorError>>;

pub(super) enum Command {
    Start(Box<HostOptions>, Reply<HostStatus>),
    Stop(Option<Duration>, Reply<HostStatus>),
    Restart(Reply<HostStatus>),
    Remove(Reply<()>),
    /// Replace the spec used by the next start (config reload).
    Declare(Box<HostOptions>, Reply<Declared>),
    /// What the host's processes use now (`None` when none runs).
    Usage(Reply<Option<crate::protocol::GroupUsage>>),
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

    pub async fn start(
        &self,
        options: &HostOptions,
    ) -> Option<Result<HostStatus, SupervisorError>> {
        self.ask(|r| Command::Start(Box::new(options.clone()), r))
            .await
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
        options: &HostOptions,
    ) -> Option<Result<Declared, SupervisorError>> {
        self.ask(|r| Command::Declare(Box::new(options.clone()), r))
            .await
    }

    pub async fn usage(
        &self,
    ) -> Option<Result<Option<crate::protocol::GroupUsage>, SupervisorError>> {
        self.ask(Command::Usage).await
    }

    pub fn ipc_counts(&self) -> crate::protocol::IpcCounts {
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
    pub spawner: Arc<spawn::Spawner>,
    pub records: Option<Arc<Records>>,
    /// Where released cgroups go to be removed, off the actor.
    pub cleanup: spawn::Cleanup,
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
    HostActor::new(parts, rx, logs, session, counters).spawn();
    handle
}
