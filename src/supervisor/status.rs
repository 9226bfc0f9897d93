//! The wire-facing view of a host: [`HostStatus`] (with [`RestartBudget`]
//! and [`LastExit`]) and `host.usage`'s [`HostUsage`]. Kept together, apart
//! from the supervisor's own types, as the boundary's copy of a host.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::state::HostState;

/// `host.usage`: a host's live resource use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostUsage {
    pub extension_id: String,
    pub state: HostState,
    pub pid: Option<u32>,
    /// `null` when no process runs.
    pub usage: Option<crate::spawn::GroupUsage>,
    /// What the host's IPC channels have seen over its life.
    pub ipc: crate::ipc::IpcCounts,
    /// Host requests waiting for an editor's answer now, and their bytes.
    pub waiting_requests: usize,
    pub waiting_request_bytes: usize,
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

/// A host as clients see it.
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
    /// When the current process started, for `uptime_ms`.
    #[serde(skip)]
    pub started_instant: Option<Instant>,
}

impl HostStatus {
    /// A copy with `uptime_ms` computed for now.
    pub fn with_uptime(&self) -> HostStatus {
        let mut s = self.clone();
        s.uptime_ms = s.started_instant.map(|t| crate::time::millis(t.elapsed()));
        s
    }
}
