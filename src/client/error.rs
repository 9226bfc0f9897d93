//! [`ClientError`]: what can go wrong talking to the daemon, and how
//! jsonrpsee's errors map onto it.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::options::JSONRPSEE_TIMEOUT;
use super::transport::TransportError;

/// What can go wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to dscode-hostd at {socket}: {source}; is the daemon running? Start it with `dscode-hostd`"
    )]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot connect to dscode-hostd at {socket}: no connection within {}; is the daemon hung?",
        humantime::format_duration(*after)
    )]
    ConnectTimeout { socket: PathBuf, after: Duration },
    /// The socket's directory could let another user put a socket there:
    /// nothing was sent.
    #[error(
        "refusing to connect to {socket}: its directory {dir} is {problem} (owner uid {owner}, mode {mode:04o}), \
         so another user could have put that socket there. It must be owned by you (uid {uid}) with mode 0700. \
         Fix: `chmod 700 {dir}` if the directory is yours, else use a socket in a private directory of yours \
         (--socket or DSCODE_HOSTD_SOCKET)"
    )]
    InsecureSocketDir {
        socket: PathBuf,
        dir: PathBuf,
        problem: &'static str,
        owner: u32,
        mode: u32,
        uid: u32,
    },
    /// The process listening on the socket is another user's: nothing was
    /// sent.
    #[error(
        "refusing to talk to {socket}: the process listening on it runs as uid {}, \
         neither you (uid {uid}) nor root. Fix: stop that process and start your own \
         dscode-hostd, or use --socket / DSCODE_HOSTD_SOCKET to name your daemon's socket",
        peer.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into())
    )]
    UntrustedPeer {
        socket: PathBuf,
        peer: Option<u32>,
        uid: u32,
    },
    /// The daemon answered with a JSON-RPC error.
    #[error("error {code}: {message}")]
    Rpc {
        code: i32,
        message: String,
        data: Option<Value>,
    },
    #[error("the daemon closed the connection")]
    Disconnected,
    #[error(
        "no reply to {method} within {}; is the daemon hung? (a longer wait: --timeout)",
        humantime::format_duration(*after)
    )]
    Timeout { method: String, after: Duration },
    #[error(
        "the daemon sent a reply line longer than {limit} bytes; the connection was closed \
         without buffering more"
    )]
    ReplyTooLong { limit: usize },
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether the connection is unusable (not connected, refused, silent,
    /// gone or broken), as opposed to the daemon answering with an error.
    pub fn is_connection(&self) -> bool {
        !matches!(self, ClientError::Rpc { .. } | ClientError::Protocol(_))
    }
}

impl From<jsonrpsee::core::client::Error> for ClientError {
    fn from(e: jsonrpsee::core::client::Error) -> Self {
        use jsonrpsee::core::client::Error as E;
        match e {
            E::Call(obj) => ClientError::Rpc {
                code: obj.code(),
                message: obj.message().to_string(),
                data: obj.data().and_then(|d| serde_json::from_str(d.get()).ok()),
            },
            E::RestartNeeded(reason) => match &*reason {
                E::Transport(t) => transport_error(t.as_ref()),
                _ => ClientError::Disconnected,
            },
            E::Transport(t) => transport_error(t.as_ref()),
            // Our own deadline comes first; this one is a year away.
            E::RequestTimeout => ClientError::Timeout {
                method: "a call".into(),
                after: JSONRPSEE_TIMEOUT,
            },
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

fn transport_error(e: &(dyn std::error::Error + Send + Sync + 'static)) -> ClientError {
    match e.downcast_ref::<TransportError>() {
        Some(TransportError::TooLong(limit)) => ClientError::ReplyTooLong { limit: *limit },
        _ => ClientError::Disconnected,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::protocol::names;

    #[test]
    fn connection_errors_are_told_apart_from_daemon_errors() {
        let rpc = ClientError::Rpc {
            code: -32001,
            message: "no such host".into(),
            data: None,
        };
        assert!(!rpc.is_connection());
        assert!(!ClientError::Protocol("x".into()).is_connection());
        assert!(ClientError::Disconnected.is_connection());
        assert!(ClientError::ReplyTooLong { limit: 1 }.is_connection());
        assert!(
            ClientError::Timeout {
                method: names::HOST_LIST.into(),
                after: Duration::from_secs(1)
            }
            .is_connection()
        );
    }

    #[test]
    fn an_over_long_line_is_told_apart_from_a_closed_connection() {
        use jsonrpsee::core::client::Error as E;
        let too_long =
            E::RestartNeeded(Arc::new(E::Transport(Box::new(TransportError::TooLong(7)))));
        assert!(matches!(
            ClientError::from(too_long),
            ClientError::ReplyTooLong { limit: 7 }
        ));
        let closed = E::RestartNeeded(Arc::new(E::Transport(Box::new(TransportError::Closed))));
        assert!(matches!(
            ClientError::from(closed),
            ClientError::Disconnected
        ));
    }
}
