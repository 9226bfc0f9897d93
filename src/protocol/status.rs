//! A host as clients see it: its lifecycle [`HostState`], its
//! [`HostStatus`] (with [`RestartBudget`] and [`LastExit`]), and
//! `host.usage`'s [`HostUsage`] (with [`GroupUsage`] and [`IpcCounts`]).
//!
//! These are copies for the wire: the supervisor fills them from its own
//! state (the actor's fields, the process group's counters) and keeps what
//! cannot be serialized, such as the `Instant` a process started, beside
//! them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Lifecycle state of one extension host (`crate::state` holds the
/// transitions between them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    Stopped,
    Starting,
    Running,
    Unhealthy,
    Restarting,
    Stopping,
    Crashed,
}

impl HostState {
    pub const ALL: [HostState; 7] = [
        HostState::Stopped,
        HostState::Starting,
        HostState::Running,
        HostState::Unhealthy,
        HostState::Restarting,
        HostState::Stopping,
        HostState::Crashed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Stopped => "stopped",
            HostState::Starting => "starting",
            HostState::Running => "running",
            HostState::Unhealthy => "unhealthy",
            HostState::Restarting => "restarting",
            HostState::Stopping => "stopping",
            HostState::Crashed => "crashed",
        }
    }

    /// States from which a host may be started again or removed.
    pub fn is_at_rest(self) -> bool {
        matches!(self, HostState::Stopped | HostState::Crashed)
    }
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The restart budget as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestartBudget {
    pub max_attempts: u32,
    pub attempts_left: u32,
}

/// How the last process of a host ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub at: String,
}

/// A host as clients see it (`host.status`, `host.list`, `host.start`, and
/// every state event's `status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    pub extension_id: String,
    pub state: HostState,
    pub pid: Option<u32>,
    pub generation: u64,
    pub restart_count: u64,
    pub restart_budget: RestartBudget,
    pub next_restart_at: Option<String>,
    pub started_at: Option<String>,
    /// Computed when the status is read (the supervisor keeps the instant
    /// the process started).
    pub uptime_ms: Option<u64>,
    pub last_exit: Option<LastExit>,
    pub entry: String,
    pub node: Option<String>,
    /// The host completed the IPC handshake; requests can be relayed.
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub ready_at: Option<String>,
    /// The memory limit the host's next (or current) process gets, in MiB,
    /// if any: its own or the daemon's default.
    #[serde(default)]
    pub memory_max_mb: Option<u64>,
    /// The CPU limit (percent of one CPU) its processes get, if any.
    #[serde(default)]
    pub cpu_max_percent: Option<u32>,
    /// Processes of an earlier stop that outlived SIGKILL and its grace,
    /// while they live (omitted when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leftover_pids: Vec<u32>,
}

/// `host.usage`: a host's live resource use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostUsage {
    pub extension_id: String,
    pub state: HostState,
    pub pid: Option<u32>,
    /// `null` when no process runs.
    pub usage: Option<GroupUsage>,
    /// What the host's IPC channels have seen over its life.
    pub ipc: IpcCounts,
    /// Host requests waiting for an editor's answer now, and their bytes.
    pub waiting_requests: usize,
    pub waiting_request_bytes: usize,
}

/// What a host's processes use right now, summed over its process group.
/// A field the platform cannot tell is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupUsage {
    /// Live (non-zombie) processes.
    pub processes: u32,
    /// Resident memory, bytes.
    pub rss_bytes: Option<u64>,
    /// User plus system CPU time, milliseconds.
    pub cpu_ms: Option<u64>,
}

/// What a host's IPC channels have seen, over all its processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpcCounts {
    /// Frames over `ipc_max_message_bytes`, skipped unread.
    pub oversize_frames: u64,
    /// Requests the host sent to the daemon or an editor.
    pub host_requests: u64,
    /// Of those, refused at once because the host's queue was full.
    pub host_requests_refused: u64,
    /// `-partial` replies not forwarded (the requesting client was too far behind).
    pub partials_dropped: u64,
}
