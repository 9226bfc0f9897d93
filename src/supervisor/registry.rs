//! The registry: [`Supervisor`], the one entry point of the layer above
//! (start/stop/restart/remove/status/list/logs/subscribe/relay/shutdown),
//! and [`Registry`], the map of live host actors it shares with them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::events::{self, EventBus, Filter, Subscription};
use super::host::{self, HostHandle};
use super::logs::{self, LogLine};
use super::settings::SupervisorConfig;
use super::spec::{Declared, HostSpec, build_spec, validate_extension_id};
use super::{SupervisorError, messages, peers, records};
use crate::protocol::{HostOptions, HostStatus, HostUsage};
use crate::state::HostState;

/// See the module documentation.
pub struct Supervisor {
    config: watch::Sender<Arc<SupervisorConfig>>,
    /// Started with the first host (it needs the runtime).
    spawner: std::sync::OnceLock<Arc<crate::spawn::Spawner>>,
    /// `running.json`, started with the first host; `None` without a state dir.
    records: std::sync::OnceLock<Option<Arc<records::Records>>>,
    /// Removes released cgroups off every reply path; started with the
    /// first host.
    cleanup: std::sync::OnceLock<crate::spawn::Cleanup>,
    messages: Arc<messages::MessageHub>,
    bus: Arc<EventBus>,
    registry: Arc<Registry>,
    shutting_down: AtomicBool,
    force_kill: watch::Sender<bool>,
}

/// The map of live host actors, shared with the actors so a removed host can
/// take itself out.
#[derive(Default)]
pub struct Registry {
    hosts: Mutex<HashMap<String, HostHandle>>,
    next_instance: AtomicU64,
}

impl Registry {
    fn get(&self, id: &str) -> Option<HostHandle> {
        self.hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Remove `id` if it is still the actor `instance`.
    pub fn remove_instance(&self, id: &str, instance: u64) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if hosts.get(id).is_some_and(|h| h.instance == instance) {
            hosts.remove(id);
        }
    }

    fn all(&self) -> Vec<HostHandle> {
        self.hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

impl Supervisor {
    pub fn new(config: SupervisorConfig) -> Arc<Self> {
        let (force_kill, _) = watch::channel(false);
        let hub_limits = config.host_requests;
        Arc::new(Supervisor {
            config: watch::Sender::new(Arc::new(config)),
            spawner: std::sync::OnceLock::new(),
            records: std::sync::OnceLock::new(),
            cleanup: std::sync::OnceLock::new(),
            messages: messages::MessageHub::new(hub_limits),
            bus: Arc::new(EventBus::new()),
            registry: Arc::new(Registry::default()),
            shutting_down: AtomicBool::new(false),
            force_kill,
        })
    }

    /// The current settings.
    pub fn config(&self) -> Arc<SupervisorConfig> {
        self.config.borrow().clone()
    }

    /// New settings for every later start (a config reload). Running hosts
    /// are not touched.
    pub fn reconfigure(&self, config: SupervisorConfig) {
        self.messages.set_limits(config.host_requests);
        self.config.send_replace(Arc::new(config));
    }

    /// Declare a host from the config: register it (stopped) if new, or
    /// replace the spec its next start uses, unless an editor runs it with
    /// its own spec: then the declaration waits until that host stops.
    pub async fn declare(
        &self,
        id: &str,
        options: &HostOptions,
    ) -> Result<Declared, SupervisorError> {
        self.check_running()?;
        validate_extension_id(id)?;
        let spec = build_spec(&self.config(), options, None)?;
        if let Some(h) = self.registry.get(id) {
            return match h.declare(options).await {
                Some(r) => r,
                None => Err(SupervisorError::UnknownHost(id.to_string())),
            };
        }
        self.register(id, spec);
        Ok(Declared::New)
    }

    fn check_running(&self) -> Result<(), SupervisorError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            Err(SupervisorError::ShuttingDown)
        } else {
            Ok(())
        }
    }
}

impl Supervisor {
    /// Start a host and, with `wait_ready`, wait until it has completed the
    /// IPC handshake: `ExitedBeforeReady` if it exits (or is judged failed)
    /// first, `ReadyTimeout` if its ready timeout passes.
    pub async fn start_and_wait(
        &self,
        id: &str,
        options: &HostOptions,
        wait_ready: bool,
    ) -> Result<HostStatus, SupervisorError> {
        if !wait_ready {
            return self.start(id, options).await;
        }
        let filter: Filter = Some([id.to_string()].into_iter().collect());
        let mut events = self.bus.subscribe(&filter).events;
        let started = self.start(id, options).await?;
        let id = id.to_string();
        let generation = started.generation;
        loop {
            let ev = match events.recv().await {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let now = self.status(&id)?;
                    if now.ready && now.generation == generation {
                        return Ok(now);
                    }
                    continue;
                }
                Err(_) => return Err(SupervisorError::ShuttingDown),
            };
            if ev.extension_id != id {
                continue;
            }
            let Ok(e) = serde_json::from_str::<crate::protocol::StateEvent>(ev.json.get()) else {
                continue;
            };
            if e.generation != Some(generation) {
                continue;
            }
            match (e.kind, e.from, e.status) {
                (crate::protocol::EventKind::Ready, _, Some(s)) => return Ok(s),
                (crate::protocol::EventKind::Transition, Some(HostState::Running), status) => {
                    if let Some(events::Failure::NotReady { ms }) = ev.failure {
                        return Err(SupervisorError::ReadyTimeout {
                            extension_id: id,
                            ms,
                        });
                    }
                    return Err(SupervisorError::ExitedBeforeReady {
                        extension_id: id,
                        reason: e.reason,
                        last_exit: status.and_then(|s| s.last_exit),
                    });
                }
                _ => {}
            }
        }
    }

    /// Register (if new) and start a host. Returns once it is spawned.
    pub async fn start(
        &self,
        id: &str,
        options: &HostOptions,
    ) -> Result<HostStatus, SupervisorError> {
        self.check_running()?;
        validate_extension_id(id)?;
        // A host removed between lookup and send is simply registered anew.
        for _ in 0..3 {
            let handle = match self.registry.get(id) {
                Some(h) => h,
                None => {
                    let spec = build_spec(&self.config(), options, None)?;
                    self.register(id, spec.clone())
                }
            };
            match handle.start(options).await {
                Some(r) => return r,
                None => continue,
            }
        }
        Err(SupervisorError::UnknownHost(id.to_string()))
    }

    fn register(&self, id: &str, spec: HostSpec) -> HostHandle {
        let mut hosts = self
            .registry
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(h) = hosts.get(id) {
            return h.clone();
        }
        let instance = self.registry.next_instance.fetch_add(1, Ordering::Relaxed);
        let handle = host::spawn_actor(host::ActorParts {
            id: id.into(),
            instance,
            spec,
            config: self.config.subscribe(),
            bus: self.bus.clone(),
            registry: Arc::downgrade(&self.registry),
            force_kill: self.force_kill.subscribe(),
            messages: self.messages.clone(),
            spawner: self
                .spawner
                .get_or_init(|| {
                    crate::spawn::Spawner::start().expect("cannot start the spawner thread")
                })
                .clone(),
            records: self
                .records
                .get_or_init(|| {
                    let dir = self.config().state_dir.clone()?;
                    Some(records::Records::start(dir.join("running.json")))
                })
                .clone(),
            cleanup: self
                .cleanup
                .get_or_init(crate::spawn::Cleanup::start)
                .clone(),
        });
        hosts.insert(id.to_string(), handle.clone());
        handle
    }

    fn handle(&self, id: &str) -> Result<HostHandle, SupervisorError> {
        self.registry
            .get(id)
            .ok_or_else(|| SupervisorError::UnknownHost(id.to_string()))
    }

    /// Stop a host: SIGTERM to its group, SIGKILL after the timeout. Returns
    /// once the group is empty.
    pub async fn stop(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<HostStatus, SupervisorError> {
        self.check_running()?;
        self.handle(id)?
            .stop(timeout)
            .await
            .ok_or_else(|| SupervisorError::UnknownHost(id.into()))?
    }

    /// Stop if running, then start again with a fresh restart budget.
    pub async fn restart(&self, id: &str) -> Result<HostStatus, SupervisorError> {
        self.check_running()?;
        self.handle(id)?
            .restart()
            .await
            .ok_or_else(|| SupervisorError::UnknownHost(id.into()))?
    }

    /// Forget a `stopped` or `crashed` host.
    pub async fn remove(&self, id: &str) -> Result<(), SupervisorError> {
        self.check_running()?;
        self.handle(id)?
            .remove()
            .await
            .ok_or_else(|| SupervisorError::UnknownHost(id.into()))?
    }

    pub fn status(&self, id: &str) -> Result<HostStatus, SupervisorError> {
        self.bus
            .status(id)
            .ok_or_else(|| SupervisorError::UnknownHost(id.to_string()))
    }

    pub fn list(&self) -> Vec<HostStatus> {
        self.bus.list()
    }

    /// What a host's processes use now, asked of its actor (the owner of
    /// its process group).
    pub async fn usage(&self, id: &str) -> Result<HostUsage, SupervisorError> {
        let usage = self
            .handle(id)?
            .usage()
            .await
            .ok_or_else(|| SupervisorError::UnknownHost(id.into()))??;
        let handle = self.handle(id)?;
        let status = self.status(id)?;
        let (waiting_requests, waiting_request_bytes) = self.messages.load(id);
        Ok(HostUsage {
            extension_id: status.extension_id,
            state: status.state,
            pid: status.pid,
            usage,
            ipc: handle.ipc_counts(),
            waiting_requests,
            waiting_request_bytes,
        })
    }

    /// The newest `n` output lines of a host.
    pub fn logs(&self, id: &str, n: usize) -> Result<Vec<LogLine>, SupervisorError> {
        Ok(self.handle(id)?.logs(n))
    }

    /// The newest `n` output lines of a host, then every new one.
    pub fn follow_logs(&self, id: &str, n: usize) -> Result<logs::Follow, SupervisorError> {
        Ok(self.handle(id)?.follow_logs(n))
    }

    pub fn subscribe(&self, filter: &Filter) -> Subscription {
        self.bus.subscribe(filter)
    }

    /// Relay a request to a ready host; the payload of its `-response`.
    pub async fn request(
        &self,
        id: &str,
        kind: &str,
        payload: Box<serde_json::value::RawValue>,
        timeout: Duration,
        partial: Option<crate::ipc::PartialSink>,
    ) -> Result<Box<serde_json::value::RawValue>, SupervisorError> {
        let session = self.handle(id)?.session();
        let relay = |error| SupervisorError::Relay {
            extension_id: id.to_string(),
            error,
        };
        let session = session.ok_or_else(|| relay(crate::ipc::RelayError::NotReady))?;
        session
            .request(kind, payload, timeout, partial)
            .await
            .map_err(relay)
    }

    /// Send a one-way message to a ready host.
    pub async fn send(
        &self,
        id: &str,
        kind: &str,
        payload: Box<serde_json::value::RawValue>,
    ) -> Result<(), SupervisorError> {
        let relay = |error| SupervisorError::Relay {
            extension_id: id.to_string(),
            error,
        };
        let session = self
            .handle(id)?
            .session()
            .ok_or_else(|| relay(crate::ipc::RelayError::NotReady))?;
        session
            .send(kind, payload, Duration::from_secs(30))
            .await
            .map_err(relay)
    }

    /// Attach an editor to host-originated requests.
    pub fn subscribe_messages(&self, filter: Filter) -> messages::Attachment {
        self.messages.attach(filter)
    }

    /// An editor's answer to a host-originated request.
    pub async fn respond(
        &self,
        id: &str,
        request_id: &serde_json::value::RawValue,
        result: Result<Box<serde_json::value::RawValue>, String>,
    ) -> Result<(), SupervisorError> {
        Ok(self.messages.respond(id, request_id, result).await?)
    }

    /// Who the hosts are, to judge a control-socket peer by (see
    /// [`peers`]): the leader pid of every host process now running.
    pub fn host_peers(&self) -> peers::HostPeers {
        peers::HostPeers::new(
            self.bus
                .list()
                .into_iter()
                .filter_map(|s| Some((i32::try_from(s.pid?).ok()?, s.extension_id))),
        )
    }

    /// The last event sequence number assigned.
    pub fn current_seq(&self) -> u64 {
        self.bus.seq()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Refuse new work and stop every host concurrently, each with its own
    /// stop timeout, all within `deadline`. Whatever is left then is killed.
    pub async fn shutdown(&self, deadline: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let hosts = self.registry.all();
        let mut set = tokio::task::JoinSet::new();
        for h in hosts {
            set.spawn(async move { h.stop(None).await });
        }
        let all = async { while set.join_next().await.is_some() {} };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!("shutdown deadline passed; killing the remaining hosts");
            self.kill_all_now();
            let rest = async { while set.join_next().await.is_some() {} };
            if tokio::time::timeout(Duration::from_secs(5), rest)
                .await
                .is_err()
            {
                tracing::error!("some hosts did not exit after SIGKILL");
            }
        }
    }

    /// SIGKILL every host's process group at once (a second SIGINT).
    pub fn kill_all_now(&self) {
        self.force_kill.send_replace(true);
    }
}

/// Linux only: the fixture is `/bin/sh` under the default sandbox.
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The next transition of the subscribed host.
    async fn next_transition(
        rx: &mut tokio::sync::broadcast::Receiver<Arc<events::BusEvent>>,
    ) -> crate::protocol::StateEvent {
        loop {
            let ev = rx.recv().await.expect("bus open");
            let e: crate::protocol::StateEvent = serde_json::from_str(ev.json.get()).unwrap();
            if e.kind == crate::protocol::EventKind::Transition {
                return e;
            }
        }
    }

    /// Paused time, deterministic: a host's process exits while the daemon
    /// cannot run (as after SIGSTOP), then its stable time passes; when the
    /// actor wakes, the timer and the exit are both due. The exit must win:
    /// the budget of a process that is gone is never restored.
    #[tokio::test(start_paused = true)]
    async fn an_exit_due_with_the_stable_timer_wins() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path().join("exit3.sh");
        std::fs::write(&entry, "exit 3\n").unwrap();
        let mut config = SupervisorConfig::new(dir.path().join("run"));
        config.node = Some("/bin/sh".into());
        config.ipc.ready_timeout = Duration::ZERO;
        config.ipc.heartbeat_interval = Duration::ZERO;
        let sup = Supervisor::new(config);
        let filter: Filter = Some(["t.race".to_string()].into_iter().collect());
        let mut rx = sup.subscribe(&filter).events;
        let options = HostOptions {
            entry: Some(entry),
            restart: Some(crate::protocol::RestartOptions {
                max_attempts: Some(5),
                backoff_ms: Some(0),
                stable_after_ms: Some(10_000),
                ..Default::default()
            }),
            ..Default::default()
        };
        sup.start("t.race", &options).await.unwrap();
        // Generation 1 exits: one attempt used, restarted at once.
        loop {
            let e = next_transition(&mut rx).await;
            if e.to == Some(HostState::Running) && e.generation == Some(2) {
                break;
            }
        }
        // Generation 2 is spawned. Keep the runtime from running (or
        // auto-advancing time) while it exits, then pass its stable time.
        std::thread::sleep(std::time::Duration::from_millis(300));
        tokio::time::advance(Duration::from_secs(11)).await;
        // running → unhealthy (the exit), then the restart decision.
        let e = loop {
            let e = next_transition(&mut rx).await;
            if e.to == Some(HostState::Restarting) {
                break e;
            }
        };
        assert!(
            e.reason.ends_with("(attempt 2 of 5)"),
            "the budget was restored for a process that had exited: {}",
            e.reason
        );
        sup.shutdown(Duration::from_secs(5)).await;
    }
}
