//! What the daemon pushes to subscribers: state events
//! (`host.stateChanged`), output lines (`host.log`) and host-originated
//! requests (`host.message`).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::status::{HostState, HostStatus};

/// What a state event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The state of one host when the subscription began.
    Snapshot,
    /// A state change.
    Transition,
    /// The host completed the IPC handshake (state stays `running`).
    Ready,
    /// The host was removed from the daemon.
    Removed,
    /// The subscriber fell behind; its subscription ends with this event.
    Lagged,
}

/// One state event as subscribers receive it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateEvent {
    pub kind: EventKind,
    pub seq: u64,
    pub extension_id: Option<String>,
    pub from: Option<HostState>,
    pub to: Option<HostState>,
    pub generation: Option<u64>,
    pub pid: Option<u32>,
    pub reason: String,
    /// RFC 3339.
    pub at: String,
    pub status: Option<HostStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
}

impl StateEvent {
    /// The event that ends a subscription that fell `missed` events behind,
    /// at `at` (RFC 3339).
    pub fn lagged(seq: u64, missed: u64, at: String) -> Self {
        StateEvent {
            kind: EventKind::Lagged,
            seq,
            extension_id: None,
            from: None,
            to: None,
            generation: None,
            pid: None,
            reason: format!(
                "subscriber fell {missed} events behind; the subscription has ended, subscribe again"
            ),
            at,
            status: None,
            missed: Some(missed),
        }
    }
}

/// Which pipe an output line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One captured output line (`host.logs`, and `host.log` flattened).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    pub stream: Stream,
    pub text: String,
    /// RFC 3339.
    pub at: String,
}

/// One `host.message` notification's result: a request a host sent to its
/// editors.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostMessage<'a> {
    pub extension_id: &'a str,
    pub id: &'a RawValue,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub payload: &'a RawValue,
}
