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

mod call;
mod error;
mod events;
mod options;
mod socket;
mod transport;

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use jsonrpsee::core::client::{ClientBuilder, ClientT, SubscriptionClientT};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio_util::codec::FramedRead;

pub use call::Call;
pub use error::ClientError;
pub use events::Events;
use options::JSONRPSEE_TIMEOUT;
pub use options::{ClientOptions, DEFAULT_TIMEOUT, MAX_REPLY_BYTES, expected_work};
use socket::connect_stream;
use transport::{Named, Receiver, Sender};

use crate::lines::BoundedLines;
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

/// A connection to dscode-hostd.
pub struct Client {
    inner: jsonrpsee::core::client::Client,
    socket: PathBuf,
    options: ClientOptions,
    too_long: Arc<AtomicBool>,
}

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
