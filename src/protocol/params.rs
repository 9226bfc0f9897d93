//! Method parameters (by name, camelCase), as the daemon reads them and
//! clients write them.
//!
//! Every struct denies unknown fields, so a misspelt parameter is an error
//! that names it rather than a silently ignored value; absent optional
//! fields are left out when written.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `daemon.*`, `host.list`, `rpc.discover`: no params (`{}`).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// Restart-policy overrides of `host.start`.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestartParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backoff_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_after_ms: Option<u64>,
}

/// `host.start`'s params. Also what the Rust client sends.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StartParams {
    pub extension_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartParams>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout_ms: Option<u64>,
    /// Return only once the host has completed the IPC handshake.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wait_ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// This host's cgroup memory limit in MiB (overrides
    /// `sandbox.memory_max_mb`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_max_mb: Option<u64>,
    /// This host's CPU limit, percent of one CPU (overrides
    /// `sandbox.cpu_max_percent`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_max_percent: Option<u32>,
    /// The daemon answers the host's `get-extensions-dir` with this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extensions_dir: Option<PathBuf>,
    /// Root of the directories `get-extension-storage` answers with
    /// (default: the host's private storage directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_dir: Option<PathBuf>,
    /// Directories this host may write besides its own (sandbox).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writable_paths: Option<Vec<PathBuf>>,
    /// Variables of the daemon's environment passed through by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_env: Option<Vec<String>>,
    /// Payloads the daemon answers host requests with, by message type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_answers: Option<BTreeMap<String, serde_json::Value>>,
    /// This host's output limit, lines a second (0: none), overriding
    /// `log_rate_lines`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_rate_lines: Option<u64>,
    /// The same in bytes a second, overriding `log_rate_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_rate_bytes: Option<u64>,
}

/// `host.request` / `host.send`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RelayParams {
    pub extension_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<serde_json::value::RawValue>>,
    /// `host.request` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `host.request`'s `timeoutMs` when absent.
pub const REQUEST_TIMEOUT_DEFAULT_MS: u64 = 30_000;

/// `host.respond`: exactly one of `payload` and `error`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RespondParams {
    pub extension_id: String,
    pub id: Box<serde_json::value::RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<serde_json::value::RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Methods about one host: `host.restart`, `status`, `usage`, `remove`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdParams {
    pub extension_id: String,
}

/// `host.stop`: `timeoutMs` before SIGKILL (default: the host's own).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StopParams {
    pub extension_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `host.logs`' default and largest `lines`.
pub const LOG_LINES_DEFAULT: usize = 100;
pub const LOG_LINES_MAX: usize = 10_000;

/// `host.logs` and `host.subscribeLogs` (the tail sent first).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogsParams {
    pub extension_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<usize>,
}

/// `host.subscribe` and `host.subscribeMessages`: every host, or the ones
/// named.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubscribeParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extension_ids: Option<Vec<String>>,
}
