//! Method results and the payloads of `host.log` and `host.partial`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::events::LogLine;
use super::status::HostStatus;

/// `daemon.info`: facts about the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InfoResult {
    pub version: String,
    pub protocol_version: u32,
    pub pid: u32,
    /// RFC 3339.
    pub started_at: String,
    pub uptime_ms: u64,
    pub socket: String,
    pub hosts: usize,
    pub hosts_by_state: BTreeMap<String, usize>,
    pub config_path: Option<String>,
    pub last_reload_error: Option<String>,
    /// What the kernel gives hosts of the sandbox (Linux; `null` elsewhere).
    pub sandbox: Option<SandboxInfo>,
    /// Hosts a predecessor that died left running.
    pub recovered: Vec<Recovered>,
}

/// `daemon.info`'s `sandbox`. (Fields in alphabetical order: the order the
/// reply has always had on the wire.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxInfo {
    /// The cgroup2 directory of host cgroups, or `"unavailable"`.
    pub cgroup: String,
    pub cpu_limit: CpuLimitInfo,
    /// `"v<ABI>"` or `"unsupported"`.
    pub landlock: String,
    pub memory_limit: MemoryLimitInfo,
    /// `default`, `strict` or `off`.
    pub profile: String,
    /// `supported` or `unsupported`.
    pub seccomp: String,
}

/// The daemon's default memory limit and how limits are enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryLimitInfo {
    /// `sandbox.memory_max_mb`.
    pub mb: Option<u64>,
    /// `cgroup2`, `cgroup1` or `unavailable`.
    pub via: String,
}

/// The daemon's default CPU limit and how limits are enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuLimitInfo {
    /// `sandbox.cpu_max_percent`.
    pub percent: Option<u32>,
    /// `cgroup2`, `cgroup1` or `unavailable`.
    pub via: String,
}

/// A host the previous daemon left running when it died (`daemon.info`
/// `recovered`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recovered {
    pub extension_id: String,
    pub pid: i32,
    /// Something of it was still running and was killed.
    pub reaped: bool,
    /// What was killed, or why nothing was.
    pub detail: String,
}

/// The protocol version `daemon.info` reports.
pub const PROTOCOL_VERSION: u32 = 1;

/// `host.list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostList {
    pub hosts: Vec<HostStatus>,
}

/// `host.logs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogsResult {
    pub lines: Vec<LogLine>,
}

/// `daemon.shutdown`: `{"ok": true}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ShutdownResult {
    pub ok: bool,
}

/// `host.send`: `{"sent": true}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SentResult {
    pub sent: bool,
}

/// `host.respond`: `{"delivered": true}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct DeliveredResult {
    pub delivered: bool,
}

/// `host.remove`: `{"removed": true}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RemovedResult {
    pub removed: bool,
}

/// A host of the config a reload could not apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostFailure {
    pub extension_id: String,
    pub error: String,
}

/// `daemon.reload`: `{"ok": true}`, with `failed` and `deferred` when not
/// empty. (Fields in alphabetical order: the order the reply has always had
/// on the wire.)
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReloadResult {
    /// Hosts an editor runs with its own spec: their declaration applies
    /// once they stop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deferred: Vec<String>,
    /// Declarations or autostarts that failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<HostFailure>,
    pub ok: bool,
}

/// The result of one `host.log` notification: a line (flattened) or, once
/// before the subscription ends, how many lines were missed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEvent<'a> {
    pub extension_id: &'a str,
    #[serde(flatten)]
    pub line: Option<&'a LogLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lagged: Option<u64>,
}

impl<'a> LogEvent<'a> {
    pub fn line(extension_id: &'a str, line: &'a LogLine) -> Self {
        LogEvent {
            extension_id,
            line: Some(line),
            lagged: None,
        }
    }

    pub fn lagged(extension_id: &'a str, missed: u64) -> Self {
        LogEvent {
            extension_id,
            line: None,
            lagged: Some(missed),
        }
    }
}

/// The final `host.message` of a subscriber too far behind.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Lagged {
    pub lagged: u64,
}

/// The params of a `host.partial` notification: one `<type>-partial` reply
/// to the relayed request `request_id` of this connection.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Partial<'a> {
    pub request_id: &'a RawValue,
    pub extension_id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub payload: &'a RawValue,
}
