//! A typed async client for the control socket, for editors' Rust backends
//! (a Tauri app, say) and for `dscode-hostctl`.
//!
//! It is jsonrpsee's async client over a line-delimited local socket. A daemon
//! that goes away is reported as [`ClientError::Disconnected`], never a hang:
//! pending calls fail and event streams end.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use dscode_hostd::client::{Client, StartParams};
//!
//! # async fn demo() -> Result<(), dscode_hostd::client::ClientError> {
//! let client = Client::connect(&Client::default_socket()).await?;
//! let status = client
//!     .start(StartParams {
//!         extension_id: "acme.hello".into(),
//!         entry: Some("/opt/ext/hello/main.js".into()),
//!         ..Default::default()
//!     })
//!     .await?;
//! println!("{} is {} (pid {:?})", status.extension_id, status.state, status.pid);
//!
//! let mut events = client.subscribe(None).await?;
//! while let Some(event) = events.next().await {
//!     let event = event?;
//!     println!("#{} {:?} -> {:?}: {}", event.seq, event.from, event.to, event.reason);
//! }
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use interprocess::local_socket::tokio::Stream as LocalStream;
use interprocess::local_socket::traits::tokio::Stream as _;
use jsonrpsee::core::client::{
    ClientBuilder, ClientT, ReceivedMessage, SubscriptionClientT, TransportReceiverT,
    TransportSenderT,
};
use jsonrpsee::core::traits::ToRpcParams;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_util::codec::FramedRead;

use crate::lines::{BoundedLines, Line};
pub use crate::rpc::params::{RestartParams, StartParams};
pub use crate::spawn::GroupUsage;
pub use crate::supervisor::events::{EventKind, StateEvent};
pub use crate::supervisor::logs::LogLine;
pub use crate::supervisor::{HostStatus, HostUsage};

/// Longest reply line the client accepts.
const MAX_REPLY_BYTES: usize = 128 * 1024 * 1024;

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
    /// The daemon answered with a JSON-RPC error.
    #[error("error {code}: {message}")]
    Rpc {
        code: i32,
        message: String,
        data: Option<Value>,
    },
    #[error("the daemon closed the connection")]
    Disconnected,
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply: {0}")]
    Protocol(String),
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
            E::RestartNeeded(_) | E::Transport(_) => ClientError::Disconnected,
            E::RequestTimeout => ClientError::Timeout(REQUEST_TIMEOUT),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

/// How long a call may take. Generous: `host.stop` waits for the stop timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Line transport: one JSON message per line.
struct Sender(WriteHalf<LocalStream>);
struct Receiver(FramedRead<ReadHalf<LocalStream>, BoundedLines>);

#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("reply line longer than {MAX_REPLY_BYTES} bytes")]
    TooLong,
}

impl TransportSenderT for Sender {
    type Error = TransportError;
    async fn send(&mut self, mut msg: String) -> Result<(), TransportError> {
        msg.push('\n');
        self.0.write_all(msg.as_bytes()).await?;
        Ok(())
    }
}

impl TransportReceiverT for Receiver {
    type Error = TransportError;
    async fn receive(&mut self) -> Result<ReceivedMessage, TransportError> {
        loop {
            return match self.0.next().await {
                None => Err(TransportError::Closed),
                Some(Err(e)) => Err(e.into()),
                Some(Ok(Line::TooLong(_))) => Err(TransportError::TooLong),
                Some(Ok(Line::Complete(b))) if b.is_empty() => continue,
                Some(Ok(Line::Complete(b))) => Ok(ReceivedMessage::Bytes(b.to_vec())),
            };
        }
    }
}

/// Params as a JSON value (by name).
struct Named(Value);

impl ToRpcParams for Named {
    fn to_rpc_params(self) -> Result<Option<Box<RawValue>>, serde_json::Error> {
        serde_json::value::to_raw_value(&self.0).map(Some)
    }
}

/// A connection to dscode-hostd.
pub struct Client {
    inner: jsonrpsee::core::client::Client,
    socket: PathBuf,
}

/// A stream of notifications; ends when the daemon goes away or the
/// subscription ends (after a `lagged` event).
pub struct Events<T> {
    inner: jsonrpsee::core::client::Subscription<T>,
}

impl<T: DeserializeOwned> Stream for Events<T> {
    type Item = Result<T, ClientError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner)
            .poll_next(cx)
            .map(|o| o.map(|r| r.map_err(|e| ClientError::Protocol(e.to_string()))))
    }
}

impl<T> Unpin for Events<T> {}

impl Client {
    /// The socket the daemon uses by default (same resolution as the daemon,
    /// without a config file): `$DSCODE_HOSTD_SOCKET`, then the runtime dir.
    pub fn default_socket() -> PathBuf {
        crate::paths::resolve_socket(None, None)
    }

    pub async fn connect(socket: &Path) -> Result<Client, ClientError> {
        let err = |source| ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        };
        let stream = connect_stream(socket).await.map_err(err)?;
        let (recv, send) = tokio::io::split(stream);
        let inner = ClientBuilder::default()
            .request_timeout(REQUEST_TIMEOUT)
            .max_buffer_capacity_per_subscription(4096)
            .build_with_tokio(
                Sender(send),
                Receiver(FramedRead::new(recv, BoundedLines::new(MAX_REPLY_BYTES))),
            );
        Ok(Client {
            inner,
            socket: socket.to_path_buf(),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Call any method with by-name params.
    pub async fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<R, ClientError> {
        Ok(self.inner.request(method, Named(params)).await?)
    }

    pub async fn info(&self) -> Result<Value, ClientError> {
        self.call("daemon.info", json!({})).await
    }

    pub async fn shutdown(&self) -> Result<(), ClientError> {
        self.call::<Value>("daemon.shutdown", json!({}))
            .await
            .map(drop)
    }

    pub async fn reload(&self) -> Result<Value, ClientError> {
        self.call("daemon.reload", json!({})).await
    }

    pub async fn start(&self, params: StartParams) -> Result<HostStatus, ClientError> {
        let p = serde_json::to_value(params).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.call("host.start", p).await
    }

    pub async fn stop(
        &self,
        extension_id: &str,
        timeout: Option<Duration>,
    ) -> Result<HostStatus, ClientError> {
        let mut p = json!({ "extensionId": extension_id });
        if let Some(t) = timeout {
            p["timeoutMs"] = json!(crate::time::millis(t));
        }
        self.call("host.stop", p).await
    }

    pub async fn restart(&self, extension_id: &str) -> Result<HostStatus, ClientError> {
        self.call("host.restart", json!({ "extensionId": extension_id }))
            .await
    }

    pub async fn status(&self, extension_id: &str) -> Result<HostStatus, ClientError> {
        self.call("host.status", json!({ "extensionId": extension_id }))
            .await
    }

    /// What a host's processes use now (count, resident memory, CPU time).
    pub async fn usage(&self, extension_id: &str) -> Result<HostUsage, ClientError> {
        self.call("host.usage", json!({ "extensionId": extension_id }))
            .await
    }

    pub async fn list(&self) -> Result<Vec<HostStatus>, ClientError> {
        #[derive(serde::Deserialize)]
        struct List {
            hosts: Vec<HostStatus>,
        }
        Ok(self.call::<List>("host.list", json!({})).await?.hosts)
    }

    pub async fn remove(&self, extension_id: &str) -> Result<(), ClientError> {
        self.call::<Value>("host.remove", json!({ "extensionId": extension_id }))
            .await
            .map(drop)
    }

    pub async fn logs(
        &self,
        extension_id: &str,
        lines: usize,
    ) -> Result<Vec<LogLine>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Logs {
            lines: Vec<LogLine>,
        }
        let r: Logs = self
            .call(
                "host.logs",
                json!({ "extensionId": extension_id, "lines": lines }),
            )
            .await?;
        Ok(r.lines)
    }

    /// State events: a snapshot of each matching host, then every change.
    pub async fn subscribe(
        &self,
        extension_ids: Option<Vec<String>>,
    ) -> Result<Events<StateEvent>, ClientError> {
        let p = match extension_ids {
            Some(ids) => json!({ "extensionIds": ids }),
            None => json!({}),
        };
        let inner = self
            .inner
            .subscribe("host.subscribe", Named(p), "host.unsubscribe")
            .await?;
        Ok(Events { inner })
    }

    /// Output lines of one host: the newest `tail`, then every new one. Each
    /// item is a `host.log` result: `{extensionId, stream, text, at}`, or
    /// `{extensionId, lagged}` once before the stream ends.
    pub async fn follow_logs(
        &self,
        extension_id: &str,
        tail: usize,
    ) -> Result<Events<Value>, ClientError> {
        let inner = self
            .inner
            .subscribe(
                "host.subscribeLogs",
                Named(json!({ "extensionId": extension_id, "lines": tail })),
                "host.unsubscribe",
            )
            .await?;
        Ok(Events { inner })
    }
}

#[cfg(unix)]
async fn connect_stream(socket: &Path) -> std::io::Result<LocalStream> {
    use interprocess::local_socket::{GenericFilePath, ToFsName};
    LocalStream::connect(socket.to_fs_name::<GenericFilePath>()?).await
}

#[cfg(windows)]
async fn connect_stream(socket: &Path) -> std::io::Result<LocalStream> {
    use interprocess::local_socket::{GenericNamespaced, ToNsName};
    let name = socket
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other("bad pipe name"))?;
    LocalStream::connect(name.to_ns_name::<GenericNamespaced>()?).await
}
