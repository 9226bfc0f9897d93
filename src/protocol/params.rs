//! Method parameters (by name, camelCase), as the daemon reads them and
//! clients write them.
//!
//! Every struct denies unknown fields, so a misspelt parameter is an error
//! that names it rather than a silently ignored value; absent optional
//! fields are left out when written.

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::options::{HostOptions, Keys, read_id_flag_options};

/// `daemon.*`, `host.list`, `rpc.discover`: no params (`{}`).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// `host.start`'s params: the host, whether to wait for its handshake, and
/// its options beside them in the same object. Also what the Rust client
/// sends.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StartParams {
    pub extension_id: String,
    /// Return only once the host has completed the IPC handshake.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub wait_ready: bool,
    #[serde(flatten)]
    pub options: HostOptions,
}

impl<'de> Deserialize<'de> for StartParams {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(StartVisitor)
    }
}

struct StartVisitor;

impl<'de> Visitor<'de> for StartVisitor {
    type Value = StartParams;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("struct StartParams")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StartParams, A::Error> {
        let (extension_id, wait_ready, options) =
            read_id_flag_options(map, Keys::Camel, &["extensionId", "waitReady"])?;
        Ok(StartParams {
            extension_id,
            wait_ready,
            options,
        })
    }
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
