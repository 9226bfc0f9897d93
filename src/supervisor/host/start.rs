//! A start: `stopped`/`crashed`/`restarting` → `starting` → `running` (or
//! `crashed` when the spawn fails). Node is resolved, the blocking half (IPC
//! socket, verification, private dirs, cgroups: `spawn::prepare`) runs on a
//! blocking thread, at most two at a time daemon-wide, and the fork on the
//! spawner thread; then the pipes are pumped and the IPC session starts.
//!
//! The actor awaits all of it: its mailbox waits meanwhile (normally a few
//! milliseconds; the first start after Node changes also hashes it, and a
//! start storm queues behind the two preparation slots). Status reads never
//! wait (they read the bus), and no other host's actor is held up.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::time::Instant;

use super::actor::HostActor;
use crate::ipc::{self, SessionConfig, SessionParts};
use crate::protocol::HostStatus;
use crate::spawn::{self, Cgroups, HostLaunch, Limits, SpawnError};
use crate::state::Input;
use crate::supervisor::budget::{Budget, Event as BudgetEvent};
use crate::supervisor::logs::{self, Stream};
use crate::supervisor::{SupervisorConfig, SupervisorError};

impl HostActor {
    /// From `stopped`, `crashed` or `restarting`: go through `starting` to
    /// `running`, or to `crashed` if the spawn fails.
    pub(super) async fn start(&mut self, reason: &str) -> Result<HostStatus, SupervisorError> {
        self.restart_at = None;
        if !self.apply(Input::Start, reason) {
            return Err(self.invalid());
        }
        self.spawn_in_starting().await
    }

    /// What `spawn::prepare` needs, from the host's spec and the settings.
    fn launch(&self, config: &SupervisorConfig, node: std::path::PathBuf) -> HostLaunch {
        let (ipc_socket, ipc_incoming) = ipc::ipc_paths(&config.runtime_dir, &self.id);
        HostLaunch {
            extension_id: self.id.clone(),
            node,
            node_args: config.node_args.clone(),
            node_policy: config.node_policy.clone(),
            entry: self.spec.entry.clone(),
            args: self.spec.args.clone(),
            cwd: self.spec.cwd.clone(),
            base_env: config.base_env.clone(),
            pass_env: self.spec.pass_env.clone(),
            env: self.spec.env.clone(),
            resource_path: config.resource_path.clone(),
            ipc_socket,
            ipc_incoming,
            ipc_root: ipc::transport::ipc_root(&config.runtime_dir),
            runtime_dir: config.runtime_dir.clone(),
            state_dir: config.state_dir.clone(),
            run_as: config.run_as,
            sandbox: config.sandbox.clone(),
            writable_paths: self.spec.writable_paths.clone(),
            storage_dir: self.spec.storage_dir.clone(),
            cgroups: config.cgroups.clone(),
            limits: Limits {
                memory_max: self.spec.memory_max(config),
                cpu_max_percent: self.spec.cpu_max_percent(config),
            },
        }
    }

    /// Resolve Node, then the blocking half on a blocking thread (IPC
    /// socket, verification, private dirs, cgroups), then fork on the
    /// spawner thread. The actor's own thread never blocks on any of it.
    async fn prepare_and_spawn(
        &mut self,
        config: &Arc<SupervisorConfig>,
    ) -> Result<(spawn::Spawned, Cgroups, ipc::Prepared), SpawnError> {
        let node = spawn::resolve_node(
            config.node.as_deref(),
            config.exe_dir.as_deref(),
            config.resource_path.as_deref(),
        )?;
        self.node = Some(node.display().to_string());
        let launch = self.launch(config, node.clone());
        let owner = config.run_as;
        let gone = |e: tokio::task::JoinError| SpawnError::Exec {
            path: node.clone(),
            source: Arc::new(std::io::Error::other(e)),
        };
        // A start storm must not become a thread storm: at most two
        // preparations at a time (the host has two cores' worth of work to
        // give them), on reused blocking threads.
        static PREPARING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
        let turn = PREPARING.acquire().await.expect("never closed");
        let (p, ipc) = tokio::task::spawn_blocking(move || {
            let ipc =
                ipc::prepare(&launch.ipc_incoming, &launch.ipc_socket, owner).map_err(|e| {
                    SpawnError::Exec {
                        path: launch.ipc_incoming.clone(),
                        source: Arc::new(e),
                    }
                })?;
            Ok::<_, SpawnError>((spawn::prepare(&launch)?, ipc))
        })
        .await
        .map_err(gone)??;
        drop(turn);
        match self.spawner.spawn(p.launch).await {
            Ok(s) => Ok((s, p.cgroups, ipc)),
            Err(e) => {
                // Nothing joined them.
                p.cgroups.release(&self.cleanup);
                Err(e)
            }
        }
    }

    pub(super) async fn spawn_in_starting(&mut self) -> Result<HostStatus, SupervisorError> {
        let config = self.settings();
        let spawned = self.prepare_and_spawn(&config).await;
        match spawned {
            Ok((mut s, cgroups, mut prepared)) => {
                let contained = cgroups.contain(s.group);
                prepared.expect_group(contained.group_id());
                self.generation += 1;
                self.pid = Some(s.pid);
                if let Some(r) = &self.records {
                    r.up(
                        &self.id,
                        s.pid,
                        contained.group_id(),
                        contained.cgroup_dir(),
                    );
                }
                self.contained = Some(contained);
                self.started = Some((SystemTime::now(), Instant::now()));
                self.failure = None;
                self.stable_at =
                    Budget::arms_stable_timer(BudgetEvent::Spawned, self.ready_required())
                        .then(|| Instant::now() + self.spec.restart.stable_after);
                let max = config.log_line_bytes;
                // One budget for both pipes of this process.
                let limiter = Arc::new(Mutex::new(logs::Limiter::new(self.spec.log_rate(&config))));
                if let Some(out) = s.child.stdout.take() {
                    tokio::spawn(logs::pump(
                        out,
                        Stream::Stdout,
                        self.id.clone(),
                        self.logs.clone(),
                        max,
                        limiter.clone(),
                    ));
                }
                if let Some(err) = s.child.stderr.take() {
                    tokio::spawn(logs::pump(
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
                let answers = crate::supervisor::answers::LocalAnswers {
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
}
