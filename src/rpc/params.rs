//! Method parameters (by name, camelCase) and their parsing.
//!
//! Every struct denies unknown fields, so a misspelt parameter is an error
//! that names it rather than a silently ignored value.

use std::collections::BTreeMap;
use std::path::PathBuf;

use jsonrpsee_types::{ErrorObject, ErrorObjectOwned, Params};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::codes::INVALID_PARAMS_CODE;

/// `-32602` with a message naming the field, and `data: {"field"}`.
pub fn invalid_params(field: &str, reason: &str) -> ErrorObjectOwned {
    let message = if field.is_empty() {
        format!("invalid params: {reason}")
    } else {
        format!("invalid params: {field}: {reason}")
    };
    ErrorObject::owned(
        INVALID_PARAMS_CODE,
        message,
        Some(serde_json::json!({ "field": field })),
    )
}

/// Parse by-name params. Absent params and `[]` read as `{}`.
pub fn parse<T: DeserializeOwned>(params: &Params<'_>) -> Result<T, ErrorObjectOwned> {
    let raw = params.as_str().map(str::trim).unwrap_or("{}");
    let raw = match raw {
        "" | "[]" | "null" => "{}",
        r if r.starts_with('[') => {
            return Err(invalid_params("", "params must be an object (by name)"));
        }
        r => r,
    };
    let mut de = serde_json::Deserializer::from_str(raw);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        invalid_params(&field, &e.inner().to_string())
    })
}

#[derive(Debug, Deserialize)]
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RelayParams {
    pub extension_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub payload: Option<Box<serde_json::value::RawValue>>,
    /// `host.request` only.
    pub timeout_ms: Option<u64>,
}

pub const REQUEST_TIMEOUT_DEFAULT_MS: u64 = 30_000;

/// `host.respond`: exactly one of `payload` and `error`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RespondParams {
    pub extension_id: String,
    pub id: Box<serde_json::value::RawValue>,
    pub payload: Option<Box<serde_json::value::RawValue>>,
    pub error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdParams {
    pub extension_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StopParams {
    pub extension_id: String,
    pub timeout_ms: Option<u64>,
}

pub const LOG_LINES_DEFAULT: usize = 100;
pub const LOG_LINES_MAX: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogsParams {
    pub extension_id: String,
    pub lines: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubscribeParams {
    pub extension_ids: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Params<'_> {
        Params::new(Some(s))
    }

    #[test]
    fn missing_field_is_named() {
        let e = parse::<IdParams>(&p("{}")).unwrap_err();
        assert_eq!(e.code(), INVALID_PARAMS_CODE);
        assert!(e.message().contains("extensionId"), "{}", e.message());
    }

    #[test]
    fn wrong_type_names_the_path() {
        let e = parse::<StartParams>(&p(r#"{"extensionId":"a","restart":{"backoffMs":"x"}}"#))
            .unwrap_err();
        assert!(e.message().contains("restart.backoffMs"), "{}", e.message());
    }

    #[test]
    fn unknown_field_is_named() {
        let e = parse::<IdParams>(&p(r#"{"extensionId":"a","bogus":1}"#)).unwrap_err();
        assert!(e.message().contains("bogus"), "{}", e.message());
    }

    #[test]
    fn absent_params_read_as_empty_object() {
        parse::<NoParams>(&Params::new(None)).unwrap();
        parse::<NoParams>(&p("[]")).unwrap();
        assert!(parse::<IdParams>(&p(r#"["a"]"#)).is_err());
    }
}
