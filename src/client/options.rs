//! How a [`Client`](super::Client) connects and how long it waits: the
//! options, the reply-line limit, and the time each call asks the daemon to
//! work before it replies.

use std::time::Duration;

use serde_json::Value;

use crate::protocol::names;

/// Longest reply line the client reads: the daemon's own limit on one
/// response (`MAX_RESPONSE_BYTES` in `rpc/transport.rs`, envelope included),
/// so every reply the daemon can send fits and a longer line is an error
/// after at most this many bytes have been buffered.
pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// Default for [`ClientOptions::connect_timeout`] and
/// [`ClientOptions::reply_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a [`Client`](super::Client) connects and how long it waits.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long connecting may take (including the socket checks).
    pub connect_timeout: Duration,
    /// How long a call may wait for its reply *beyond the time the call asks
    /// the daemon to take*: `host.stop` waits for its `timeoutMs` (else the
    /// default 5 s stop timeout) on top, `host.restart` for the default stop
    /// timeout, `host.request` for its `timeoutMs` (else 30 s), `host.send`
    /// for 30 s, and `host.start` with `waitReady` for its `readyTimeoutMs`
    /// (else 60 s). A host configured with a longer stop timeout than 5 s
    /// needs a larger value here (or an explicit `timeoutMs`).
    pub reply_timeout: Duration,
    /// Longest reply line read ([`MAX_REPLY_BYTES`] by default); a longer one
    /// fails the connection with [`ClientError::ReplyTooLong`](super::ClientError::ReplyTooLong).
    pub max_reply_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: DEFAULT_TIMEOUT,
            reply_timeout: DEFAULT_TIMEOUT,
            max_reply_bytes: MAX_REPLY_BYTES,
        }
    }
}

/// jsonrpsee's own request timeout: out of the way of [`Client::call`](super::Client::call)'s.
pub(super) const JSONRPSEE_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The daemon's documented defaults for the waits a call may ask for.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_REQUEST_TIMEOUT: Duration =
    Duration::from_millis(crate::protocol::params::REQUEST_TIMEOUT_DEFAULT_MS);
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `method` asks the daemon to work before it replies, from its
/// params and the daemon's documented defaults (see
/// [`ClientOptions::reply_timeout`]).
pub fn expected_work(method: &str, params: &Value) -> Duration {
    let ms = |key: &str, default: Duration| {
        params
            .get(key)
            .and_then(Value::as_u64)
            .map(Duration::from_millis)
            .unwrap_or(default)
    };
    match method {
        names::HOST_STOP => ms("timeoutMs", DEFAULT_STOP_TIMEOUT),
        names::HOST_RESTART => DEFAULT_STOP_TIMEOUT,
        names::HOST_REQUEST => ms("timeoutMs", DEFAULT_REQUEST_TIMEOUT),
        names::HOST_SEND => DEFAULT_REQUEST_TIMEOUT,
        names::HOST_START if params.get("waitReady") == Some(&Value::Bool(true)) => {
            ms("readyTimeoutMs", DEFAULT_READY_TIMEOUT)
        }
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn calls_wait_for_the_work_they_ask_for() {
        let s = Duration::from_secs;
        assert_eq!(expected_work(names::HOST_LIST, &json!({})), Duration::ZERO);
        assert_eq!(
            expected_work(names::HOST_STOP, &json!({"extensionId": "a"})),
            s(5)
        );
        assert_eq!(
            expected_work(names::HOST_STOP, &json!({"timeoutMs": 20_000})),
            s(20)
        );
        assert_eq!(expected_work(names::HOST_RESTART, &json!({})), s(5));
        assert_eq!(expected_work(names::HOST_REQUEST, &json!({})), s(30));
        assert_eq!(
            expected_work(names::HOST_REQUEST, &json!({"timeoutMs": 100})),
            Duration::from_millis(100)
        );
        assert_eq!(expected_work(names::HOST_SEND, &json!({})), s(30));
        assert_eq!(expected_work(names::HOST_START, &json!({})), Duration::ZERO);
        assert_eq!(
            expected_work(names::HOST_START, &json!({"waitReady": true})),
            s(60)
        );
        assert_eq!(
            expected_work(
                names::HOST_START,
                &json!({"waitReady": true, "readyTimeoutMs": 1000})
            ),
            s(1)
        );
    }
}
