//! Results and notification payloads the RPC layer defines itself.
//!
//! Shapes that carry the supervisor's own types (a host's status, a log
//! line, a recovered host's record) are generic over them here, so this
//! module needs nothing but serde: the daemon fills them with its types, a
//! client reads them into its own (or into `serde_json::Value`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// `daemon.info`: facts about the daemon. `R` is a host recovered from a
/// predecessor that died.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InfoResult<R = serde_json::Value> {
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
    /// What the kernel supports of the sandbox.
    pub sandbox: Option<serde_json::Value>,
    pub recovered: Vec<R>,
}

/// The protocol version `daemon.info` reports.
pub const PROTOCOL_VERSION: u32 = 1;

/// `host.list`: `H` is a host's status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostList<H> {
    pub hosts: Vec<H>,
}

/// `host.logs`: `L` is one output line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogsResult<L> {
    pub lines: Vec<L>,
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

/// The result of one `host.log` notification: a line (`L`, flattened) or,
/// once before the subscription ends, how many lines were missed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEvent<'a, L> {
    pub extension_id: &'a str,
    #[serde(flatten)]
    pub line: Option<&'a L>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lagged: Option<u64>,
}

impl<'a, L> LogEvent<'a, L> {
    pub fn line(extension_id: &'a str, line: &'a L) -> Self {
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
