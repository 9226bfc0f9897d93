//! A dispatcher for the fuzz targets (`fuzz/`): the full method set over a
//! supervisor whose hosts can never spawn, built from public constructors
//! only. Not part of the API.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::connection::Connection;
use super::methods::{DaemonInfo, RpcContext, build_module};
use super::transport::Dispatcher;
use crate::supervisor::{Supervisor, SupervisorConfig};

/// A dispatcher over the full method set and a supervisor whose hosts can
/// never spawn (its `node` does not exist). Replies that would go to
/// subscribers are dropped. Needs a tokio runtime.
pub fn dispatcher() -> Dispatcher {
    let dir = std::env::temp_dir().join(format!("hostd-fuzz-{}", std::process::id()));
    let mut config = SupervisorConfig::new(dir.clone());
    config.node = Some(dir.join("no-such-node"));
    let (control, _) = mpsc::channel(1);
    let module = build_module(RpcContext {
        supervisor: Supervisor::new(config),
        info: DaemonInfo {
            pid: std::process::id(),
            started_at: std::time::SystemTime::now(),
            started: std::time::Instant::now(),
            socket: dir.join("hostd.sock"),
            recovered: Vec::new(),
        },
        control,
        state: Arc::default(),
    });
    let (out, _) = mpsc::channel(1);
    Dispatcher::new(module.into(), 0, Arc::new(Connection::new(out)))
}
