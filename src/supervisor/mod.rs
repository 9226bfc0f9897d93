//! The supervisor: a registry of host actors and the event bus they publish to.
//!
//! Each host is owned by one tokio task ([`host`]) that holds its child
//! process, its state machine and its timers. Everything here talks to those
//! tasks through [`host::HostHandle`]s over bounded channels; status and list
//! are read from the bus, so they never wait behind a host that is stopping or
//! backing off.

pub mod answers;
pub mod budget;
pub mod events;
pub mod host;
pub mod logs;
pub mod messages;
pub mod peers;
pub mod records;
mod registry;
mod settings;
mod spec;

pub use registry::{Registry, Supervisor};
pub use settings::{CgroupRoots, SupervisorConfig, allowed_env};
pub use spec::{
    Declared, HostSpec, IpcPolicy, MAX_CPU_PERCENT, MAX_ID_LEN, MAX_LOG_RATE, MAX_MEMORY_MB,
    MAX_SETTING_MS, RestartPolicy, STATIC_ANSWER_MAX_BYTES, STATIC_ANSWERS_MAX, build_spec,
    static_answers, validate_extension_id,
};

use crate::protocol::{HostState, LastExit};
use crate::spawn::SpawnError;

/// Errors of the supervisor domain. The RPC layer maps each to its code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SupervisorError {
    #[error("unknown extension host: {0}")]
    UnknownHost(String),
    #[error("invalid state transition: host {extension_id} is {state}")]
    InvalidTransition {
        extension_id: String,
        state: HostState,
    },
    #[error("spawn failed: {source}")]
    Spawn {
        extension_id: String,
        #[source]
        source: SpawnError,
    },
    #[error("{field}: {reason}")]
    InvalidSpec { field: &'static str, reason: String },
    #[error("daemon is shutting down")]
    ShuttingDown,
    #[error("host {extension_id} exited before it was ready ({reason})")]
    ExitedBeforeReady {
        extension_id: String,
        reason: String,
        last_exit: Option<LastExit>,
    },
    #[error("host {extension_id} was not ready within {ms} ms")]
    ReadyTimeout { extension_id: String, ms: u64 },
    #[error("{error}")]
    Relay {
        extension_id: String,
        error: crate::ipc::RelayError,
    },
    #[error("{0}")]
    Respond(#[from] messages::RespondError),
}
