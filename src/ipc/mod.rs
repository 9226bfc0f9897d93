//! The per-host IPC channel that DSCode extension hosts speak; the wire
//! protocol is `proto-docs/ext-host-protocol.md`.
//!
//! Right after the spawn, two things happen at once: the daemon accepts the
//! host's connection on its incoming socket (`DSCODE_INCOMING_IPC_URL`) and
//! connects to the host's own socket (`DSCODE_IPC_URL`), retrying while it
//! does not exist yet. The real DSCode host waits for the second before it
//! does the first; older hosts do the first and say ready before they
//! listen. The session is ready once both connections stand and the host
//! has said `extension-host-ready` (answered at once with
//! `extension-host-ready-response {"success": true}`).
//!
//! A [`Session`](SessionHandle) is one host process's channel. It knows
//! frames, ids and sockets; it reports `Ready`, `Failed` and `Closed` to the
//! host's actor and hands host-originated requests to a [`HostRequests`]
//! sink. It knows nothing about host states or JSON-RPC.

pub mod frame;
pub mod transport;

mod counters;
mod relay;
mod session;
mod shared;

use std::time::Duration;

use serde_json::value::RawValue;

pub use counters::Counters;
pub use frame::{FrameError, Message};
pub use relay::{Replier, SessionHandle};
pub use session::{Prepared, SessionParts, prepare, start};
pub use transport::ipc_paths;

/// The host's readiness request.
pub const READY: &str = "extension-host-ready";

/// Why a request relayed to a host did not get a `-response`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RelayError {
    #[error("host is not ready")]
    NotReady,
    #[error("no reply within {0} ms")]
    Timeout(u64),
    #[error("host channel closed: {0}")]
    Closed(String),
    #[error("{message}")]
    Host {
        message: String,
        kind: String,
        payload: Box<RawValue>,
    },
    #[error("cannot encode the request: {0}")]
    Encode(String),
}

/// Channel settings for one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    pub max_frame: usize,
    /// Zero disables heartbeats.
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
}

/// What a session tells its host's actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The handshake completed: requests can be relayed.
    Ready,
    /// The host broke the protocol or stopped answering; the reason says how.
    Failed(String),
    /// The host closed its channel.
    Closed,
}

/// Where host-originated requests go.
pub trait HostRequests: Send + Sync + 'static {
    fn on_request(&self, extension_id: &str, msg: Message, reply: Replier);
}

/// Receives a relayed request's `-partial` payloads; returns `false` when
/// it had to drop one.
pub type PartialSink = Box<dyn Fn(Box<RawValue>) -> bool + Send + Sync>;
