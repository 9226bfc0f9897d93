//! A typed async client for the control socket, for editors' Rust backends
//! (a Tauri app, say) and for `dscode-hostctl`.
//!
//! It is jsonrpsee's async client over a line-delimited local socket. A daemon
//! that goes away is reported as [`ClientError::Disconnected`], never a hang:
//! pending calls fail and event streams end. One that stops answering is a
//! [`ClientError::Timeout`] (every call has a reply timeout, 10 s by default
//! on top of what the call asks the daemon to wait for; see
//! [`ClientOptions`]); event streams have none. A reply line longer than the
//! daemon's own limit ([`MAX_REPLY_BYTES`]) fails the connection with
//! [`ClientError::ReplyTooLong`] instead of being buffered.
//!
//! On Unix, [`Client::connect`] sends nothing to a socket another user could
//! control: its directory must be the caller's with mode 0700, and the
//! process listening on it must run as the caller or root.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use dscode_hostd::client::{Client, HostOptions, StartParams};
//!
//! # async fn demo() -> Result<(), dscode_hostd::client::ClientError> {
//! let client = Client::connect(&Client::default_socket()).await?;
//! let status = client
//!     .start(StartParams {
//!         extension_id: "acme.hello".into(),
//!         wait_ready: false,
//!         options: HostOptions {
//!             entry: Some("/opt/ext/hello/main.js".into()),
//!             ..Default::default()
//!         },
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

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_util::codec::FramedRead;

use crate::lines::{BoundedLines, Line};
use crate::protocol::names;
pub use crate::protocol::params::StartParams;
use crate::protocol::params::{
    IdParams, LogsParams, NoParams, RelayParams, RespondParams, StopParams, SubscribeParams,
};
pub use crate::protocol::results::{
    DeliveredResult, HostList, InfoResult, LogsResult, ReloadResult, RemovedResult, SentResult,
    ShutdownResult,
};
pub use crate::protocol::{
    EventKind, GroupUsage, HostState, HostStatus, HostUsage, LogLine, StateEvent,
};
pub use crate::protocol::{HostOptions, RestartOptions};

/// Longest reply line the client reads: the daemon's own limit on one
/// response (`MAX_RESPONSE_BYTES` in `rpc/transport.rs`, envelope included),
/// so every reply the daemon can send fits and a longer line is an error
/// after at most this many bytes have been buffered.
pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// Default for [`ClientOptions::connect_timeout`] and
/// [`ClientOptions::reply_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a [`Client`] connects and how long it waits.
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
    /// fails the connection with [`ClientError::ReplyTooLong`].
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

/// jsonrpsee's own request timeout: out of the way of [`Client::call`]'s.
const JSONRPSEE_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

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

/// Line transport: one JSON message per line.
struct Sender(WriteHalf<LocalStream>);
struct Receiver {
    lines: FramedRead<ReadHalf<LocalStream>, BoundedLines>,
    limit: usize,
    /// Set when the daemon sent an over-long line, for the event streams.
    too_long: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("reply line longer than {0} bytes")]
    TooLong(usize),
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
            return match self.lines.next().await {
                None => Err(TransportError::Closed),
                Some(Err(e)) => Err(e.into()),
                Some(Ok(Line::TooLong(_))) => {
                    self.too_long.store(true, Ordering::Release);
                    Err(TransportError::TooLong(self.limit))
                }
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
    options: ClientOptions,
    too_long: Arc<AtomicBool>,
}

/// A stream of notifications; ends when the daemon goes away or the
/// subscription ends (after a `lagged` event). A daemon that sent an
/// over-long line ends it with one [`ClientError::ReplyTooLong`] first.
pub struct Events<T> {
    inner: jsonrpsee::core::client::Subscription<T>,
    too_long: Arc<AtomicBool>,
    limit: usize,
    done: bool,
}

impl<T: DeserializeOwned> Stream for Events<T> {
    type Item = Result<T, ClientError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(None) => {
                self.done = true;
                if self.too_long.load(Ordering::Acquire) {
                    let limit = self.limit;
                    return Poll::Ready(Some(Err(ClientError::ReplyTooLong { limit })));
                }
                Poll::Ready(None)
            }
            other => other.map(|o| o.map(|r| r.map_err(|e| ClientError::Protocol(e.to_string())))),
        }
    }
}

impl<T> Unpin for Events<T> {}

impl Client {
    /// The socket the daemon uses by default (same resolution as the daemon,
    /// without a config file): `$DSCODE_HOSTD_SOCKET`, then the runtime dir.
    pub fn default_socket() -> PathBuf {
        crate::paths::resolve_socket(None, None)
    }

    /// Connect with the default [`ClientOptions`].
    pub async fn connect(socket: &Path) -> Result<Client, ClientError> {
        Self::connect_with(socket, ClientOptions::default()).await
    }

    /// Connect to the daemon at `socket`. On Unix nothing is sent unless the
    /// socket's directory is the caller's own with mode 0700 (no group or
    /// other bits) and the process listening on it runs as the caller or
    /// root (`SO_PEERCRED`); otherwise [`ClientError::InsecureSocketDir`] or
    /// [`ClientError::UntrustedPeer`] says why.
    pub async fn connect_with(
        socket: &Path,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let stream = tokio::time::timeout(options.connect_timeout, connect_stream(socket))
            .await
            .map_err(|_| ClientError::ConnectTimeout {
                socket: socket.to_path_buf(),
                after: options.connect_timeout,
            })??;
        let (recv, send) = tokio::io::split(stream);
        let too_long = Arc::new(AtomicBool::new(false));
        let receiver = Receiver {
            lines: FramedRead::new(recv, BoundedLines::new(options.max_reply_bytes)),
            limit: options.max_reply_bytes,
            too_long: too_long.clone(),
        };
        let inner = ClientBuilder::default()
            .request_timeout(JSONRPSEE_TIMEOUT)
            .max_buffer_capacity_per_subscription(4096)
            .build_with_tokio(Sender(send), receiver);
        Ok(Client {
            inner,
            socket: socket.to_path_buf(),
            options,
            too_long,
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// How long a call of `method` with `params` waits for its reply.
    fn deadline(&self, method: &str, params: &Value) -> Duration {
        self.options.reply_timeout + expected_work(method, params)
    }

    /// `fut` within the reply timeout of `method`.
    async fn within<R>(
        &self,
        method: &str,
        after: Duration,
        fut: impl std::future::Future<Output = Result<R, jsonrpsee::core::client::Error>>,
    ) -> Result<R, ClientError> {
        match tokio::time::timeout(after, fut).await {
            Ok(r) => r.map_err(ClientError::from),
            Err(_) => Err(ClientError::Timeout {
                method: method.to_string(),
                after,
            }),
        }
    }

    async fn subscribe_to<T: DeserializeOwned>(
        &self,
        method: &'static str,
        params: &impl Serialize,
    ) -> Result<Events<T>, ClientError> {
        let params =
            serde_json::to_value(params).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let after = self.deadline(method, &params);
        let inner = self
            .within(
                method,
                after,
                self.inner
                    .subscribe(method, Named(params), names::HOST_UNSUBSCRIBE),
            )
            .await?;
        Ok(Events {
            inner,
            too_long: self.too_long.clone(),
            limit: self.options.max_reply_bytes,
            done: false,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Call any method with by-name params; fails with
    /// [`ClientError::Timeout`] when no reply comes within the reply timeout
    /// (plus what the call asks the daemon to wait for, see
    /// [`ClientOptions::reply_timeout`]).
    pub async fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<R, ClientError> {
        let after = self.deadline(method, &params);
        self.within(method, after, self.inner.request(method, Named(params)))
            .await
    }

    /// A typed call of `method`.
    fn typed<T, W: DeserializeOwned>(
        &self,
        method: &'static str,
        params: &impl Serialize,
        map: fn(W) -> T,
    ) -> Call<'_, T, W> {
        Call {
            client: self,
            method,
            params: serde_json::to_value(params).map_err(|e| ClientError::Protocol(e.to_string())),
            map,
            _wire: PhantomData,
        }
    }

    /// `daemon.info`: version, pid, uptime, host counts, sandbox support.
    pub fn info(&self) -> Call<'_, InfoResult> {
        self.typed(names::DAEMON_INFO, &NoParams {}, identity)
    }

    /// `daemon.shutdown`: stop every host and the daemon.
    pub fn shutdown(&self) -> Call<'_, (), ShutdownResult> {
        self.typed(names::DAEMON_SHUTDOWN, &NoParams {}, drop)
    }

    /// `daemon.reload`: re-read the config file.
    pub fn reload(&self) -> Call<'_, ReloadResult> {
        self.typed(names::DAEMON_RELOAD, &NoParams {}, identity)
    }

    pub fn start(&self, params: StartParams) -> Call<'_, HostStatus> {
        self.typed(names::HOST_START, &params, identity)
    }

    pub fn stop(&self, extension_id: &str, timeout: Option<Duration>) -> Call<'_, HostStatus> {
        let p = StopParams {
            extension_id: extension_id.to_string(),
            timeout_ms: timeout.map(crate::time::millis),
        };
        self.typed(names::HOST_STOP, &p, identity)
    }

    pub fn restart(&self, extension_id: &str) -> Call<'_, HostStatus> {
        self.typed(names::HOST_RESTART, &id_params(extension_id), identity)
    }

    pub fn status(&self, extension_id: &str) -> Call<'_, HostStatus> {
        self.typed(names::HOST_STATUS, &id_params(extension_id), identity)
    }

    /// What a host's processes use now (count, resident memory, CPU time).
    pub fn usage(&self, extension_id: &str) -> Call<'_, HostUsage> {
        self.typed(names::HOST_USAGE, &id_params(extension_id), identity)
    }

    pub fn list(&self) -> Call<'_, Vec<HostStatus>, HostList> {
        self.typed(names::HOST_LIST, &NoParams {}, |l: HostList| l.hosts)
    }

    pub fn remove(&self, extension_id: &str) -> Call<'_, (), RemovedResult> {
        self.typed(names::HOST_REMOVE, &id_params(extension_id), drop)
    }

    pub fn logs(&self, extension_id: &str, lines: usize) -> Call<'_, Vec<LogLine>, LogsResult> {
        let p = LogsParams {
            extension_id: extension_id.to_string(),
            lines: Some(lines),
        };
        self.typed(names::HOST_LOGS, &p, |l: LogsResult| l.lines)
    }

    /// `host.request`: relay a request of type `kind` to the host and return
    /// its reply's payload; waits `timeout` (else 30 s) for it.
    pub fn request(
        &self,
        extension_id: &str,
        kind: &str,
        payload: Option<Box<RawValue>>,
        timeout: Option<Duration>,
    ) -> Call<'_, Value> {
        let p = RelayParams {
            extension_id: extension_id.to_string(),
            kind: kind.to_string(),
            payload,
            timeout_ms: timeout.map(crate::time::millis),
        };
        self.typed(names::HOST_REQUEST, &p, identity)
    }

    /// `host.send`: relay a message of type `kind` that expects no reply.
    pub fn send(
        &self,
        extension_id: &str,
        kind: &str,
        payload: Option<Box<RawValue>>,
    ) -> Call<'_, (), SentResult> {
        let p = RelayParams {
            extension_id: extension_id.to_string(),
            kind: kind.to_string(),
            payload,
            timeout_ms: None,
        };
        self.typed(names::HOST_SEND, &p, drop)
    }

    /// `host.respond`: answer the host request `id` (from a
    /// [`Client::subscribe_messages`] item) with a payload or an error.
    pub fn respond(
        &self,
        extension_id: &str,
        id: Box<RawValue>,
        answer: Result<Box<RawValue>, String>,
    ) -> Call<'_, (), DeliveredResult> {
        let (payload, error) = match answer {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        };
        let p = RespondParams {
            extension_id: extension_id.to_string(),
            id,
            payload,
            error,
        };
        self.typed(names::HOST_RESPOND, &p, drop)
    }

    /// State events: a snapshot of each matching host, then every change.
    pub async fn subscribe(
        &self,
        extension_ids: Option<Vec<String>>,
    ) -> Result<Events<StateEvent>, ClientError> {
        self.subscribe_to(names::HOST_SUBSCRIBE, &SubscribeParams { extension_ids })
            .await
    }

    /// Output lines of one host: the newest `tail`, then every new one. Each
    /// item is a `host.log` result: `{extensionId, stream, text, at}`, or
    /// `{extensionId, lagged}` once before the stream ends.
    pub async fn follow_logs(
        &self,
        extension_id: &str,
        tail: usize,
    ) -> Result<Events<Value>, ClientError> {
        let p = LogsParams {
            extension_id: extension_id.to_string(),
            lines: Some(tail),
        };
        self.subscribe_to(names::HOST_SUBSCRIBE_LOGS, &p).await
    }

    /// Host-originated requests (of every host, or the ones named) as
    /// `host.message` items, to be answered with [`Client::respond`]; the
    /// first subscriber also gets the requests that waited for one.
    pub async fn subscribe_messages(
        &self,
        extension_ids: Option<Vec<String>>,
    ) -> Result<Events<Value>, ClientError> {
        self.subscribe_to(
            names::HOST_SUBSCRIBE_MESSAGES,
            &SubscribeParams { extension_ids },
        )
        .await
    }
}

fn identity<T>(t: T) -> T {
    t
}

fn id_params(extension_id: &str) -> IdParams {
    IdParams {
        extension_id: extension_id.to_string(),
    }
}

/// One call of a typed [`Client`] method: `.await` it for the typed result
/// (`T`, read from the wire shape `W`), or [`Call::json`] for the reply as
/// the daemon sent it, every field kept (`dscode-hostctl --json`).
#[must_use = "a call does nothing until awaited"]
pub struct Call<'a, T, W = T> {
    client: &'a Client,
    method: &'static str,
    params: Result<Value, ClientError>,
    map: fn(W) -> T,
    _wire: PhantomData<fn() -> W>,
}

impl<T, W> Call<'_, T, W> {
    /// The method this call names.
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// The result as JSON, as the daemon sent it.
    pub async fn json(self) -> Result<Value, ClientError> {
        self.client.call(self.method, self.params?).await
    }
}

impl<'a, T: 'a, W: DeserializeOwned + 'a> IntoFuture for Call<'a, T, W> {
    type Output = Result<T, ClientError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T, ClientError>> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let wire: W = self.client.call(self.method, self.params?).await?;
            Ok((self.map)(wire))
        })
    }
}

/// Connect, refusing a socket another user could control (see
/// [`Client::connect_with`]).
#[cfg(unix)]
async fn connect_stream(socket: &Path) -> Result<LocalStream, ClientError> {
    use interprocess::local_socket::traits::StreamCommon as _;
    use interprocess::local_socket::{GenericFilePath, ToFsName};
    let connect_err = |source| ClientError::Connect {
        socket: socket.to_path_buf(),
        source,
    };
    let uid = crate::paths::current_uid();
    check_socket_dir(socket, uid)?;
    let name = socket
        .to_fs_name::<GenericFilePath>()
        .map_err(connect_err)?;
    let stream = LocalStream::connect(name).await.map_err(connect_err)?;
    // Who listens: the credentials the listening socket was created with.
    let peer = stream.peer_creds().map_err(connect_err)?.euid();
    match peer {
        Some(p) if crate::rpc::server::peer_allowed(p, uid) => Ok(stream),
        _ => Err(ClientError::UntrustedPeer {
            socket: socket.to_path_buf(),
            peer,
            uid,
        }),
    }
}

/// The directory that really holds `socket` (symlinks resolved) must be
/// `uid`'s and 0700, or another user could have put the socket there.
#[cfg(unix)]
fn check_socket_dir(socket: &Path, uid: u32) -> Result<(), ClientError> {
    use std::os::unix::fs::MetadataExt;
    let connect_err = |source| ClientError::Connect {
        socket: socket.to_path_buf(),
        source,
    };
    // A missing socket or directory is the daemon not running.
    let real = std::fs::canonicalize(socket).map_err(connect_err)?;
    let dir = real.parent().unwrap_or(Path::new("/"));
    let meta = std::fs::metadata(dir).map_err(connect_err)?;
    let mode = meta.mode() & 0o7777;
    let problem = if meta.uid() != uid {
        "owned by another user"
    } else if mode & 0o077 != 0 {
        "accessible to group or others"
    } else {
        return Ok(());
    };
    Err(ClientError::InsecureSocketDir {
        socket: socket.to_path_buf(),
        dir: dir.to_path_buf(),
        problem,
        owner: meta.uid(),
        mode,
        uid,
    })
}

#[cfg(windows)]
async fn connect_stream(socket: &Path) -> Result<LocalStream, ClientError> {
    use interprocess::local_socket::{GenericNamespaced, ToNsName};
    let connect_err = |source| ClientError::Connect {
        socket: socket.to_path_buf(),
        source,
    };
    let name = socket
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| connect_err(std::io::Error::other("bad pipe name")))?;
    let name = name
        .to_ns_name::<GenericNamespaced>()
        .map_err(connect_err)?;
    LocalStream::connect(name).await.map_err(connect_err)
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
