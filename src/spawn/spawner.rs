//! `Spawner`: the one long-lived thread every host is created from (by
//! `clone3` or `fork`).

use std::io;
use std::sync::Arc;

use super::{LaunchSpec, SpawnError, Spawned, spawn};

type Job = (
    LaunchSpec,
    tokio::sync::oneshot::Sender<Result<Spawned, SpawnError>>,
);

/// The one long-lived thread every host is forked from.
///
/// `PR_SET_PDEATHSIG` fires when the thread that forked the child exits, not
/// the process: a child forked from a pooled thread that later retires
/// would be killed for no reason (reproduced with `spawn_blocking`). This
/// thread lives as long as the daemon.
pub struct Spawner {
    tx: std::sync::mpsc::Sender<Job>,
}

impl Spawner {
    /// Start the thread; it registers children with the current tokio runtime.
    pub fn start() -> io::Result<Arc<Spawner>> {
        let handle = tokio::runtime::Handle::current();
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("hostd-spawner".into())
            .spawn(move || {
                let _runtime = handle.enter();
                while let Ok((spec, reply)) = rx.recv() {
                    let _ = reply.send(spawn(&spec));
                }
            })?;
        Ok(Arc::new(Spawner { tx }))
    }

    /// Spawn on the spawner thread; resolves when the fork and exec are done
    /// (about a millisecond), without blocking the caller's thread.
    pub async fn spawn(&self, spec: LaunchSpec) -> Result<Spawned, SpawnError> {
        let node = spec.node.clone();
        let gone = || SpawnError::Exec {
            path: node.clone(),
            source: Arc::new(io::Error::other("the spawner thread is gone")),
        };
        let (reply, result) = tokio::sync::oneshot::channel();
        self.tx.send((spec, reply)).map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }
}
