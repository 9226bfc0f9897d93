//! The per-host IPC channel that DSCode extension hosts speak (see
//! `shared/notes/ext-host-ipc.md`): the daemon listens on a private incoming
//! socket, the host connects to it and says `extension-host-ready`, then the
//! daemon connects to the host's own socket and sends it requests.
//!
//! A [`Session`] is one host process's channel. It knows frames, ids and
//! sockets; it reports `Ready`, `Failed` and `Closed` to the host's actor and
//! hands host-originated requests to a [`HostRequests`] sink. It knows nothing
//! about host states or JSON-RPC.

pub mod frame;
pub mod transport;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::FramedRead;

use frame::FrameCodec;
pub use frame::{FrameError, Message};
use transport::Stream;
pub use transport::ipc_paths;

/// Why a request relayed to a host did not get a `-response`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RelayError {
    #[error("host is not ready")]
    NotReady,
    #[error("no reply within {0} ms")]
    Timeout(u64),
    #[error("host channel closed: {0}")]
    Closed(String),
    #[error("{message}")]
    Host {
        message: String,
        kind: String,
        payload: Box<RawValue>,
    },
    #[error("cannot encode the request: {0}")]
    Encode(String),
}

/// Channel settings for one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    pub max_frame: usize,
    /// Zero disables heartbeats.
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
}

/// What a session tells its host's actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The handshake completed: requests can be relayed.
    Ready,
    /// The host broke the protocol or stopped answering; the reason says how.
    Failed(String),
    /// The host closed its channel.
    Closed,
}

/// Where host-originated requests go.
pub trait HostRequests: Send + Sync + 'static {
    fn on_request(&self, extension_id: &str, msg: Message, reply: Replier);
}

/// One direction of a channel, writable by many tasks.
struct Conn {
    writer: tokio::sync::Mutex<WriteHalf<Stream>>,
    max_frame: usize,
}

impl Conn {
    async fn send(&self, msg: &Message) -> Result<(), RelayError> {
        let bytes =
            frame::encode(msg, self.max_frame).map_err(|e| RelayError::Encode(e.to_string()))?;
        let mut w = self.writer.lock().await;
        w.write_all(&bytes)
            .await
            .map_err(|e| RelayError::Closed(e.to_string()))
    }
}

/// Answers one host-originated request on the connection it came from.
#[derive(Clone)]
pub struct Replier {
    conn: Arc<Conn>,
}

impl Replier {
    pub async fn send(&self, msg: &Message) -> Result<(), RelayError> {
        self.conn.send(msg).await
    }
}

type Pending = Mutex<HashMap<String, oneshot::Sender<Result<Message, RelayError>>>>;

struct Shared {
    extension_id: Arc<str>,
    out: Mutex<Option<Arc<Conn>>>,
    pending: Pending,
    next_id: AtomicU64,
    /// Why the session ended, once it has.
    closed: watch::Sender<Option<String>>,
    reported: AtomicBool,
    events: mpsc::Sender<(u64, SessionEvent)>,
    generation: u64,
}

impl Shared {
    fn report(&self, ev: SessionEvent) {
        if matches!(ev, SessionEvent::Ready) || !self.reported.swap(true, Ordering::SeqCst) {
            let _ = self.events.try_send((self.generation, ev));
        }
    }

    /// Close the session: every pending request fails at once.
    fn close(&self, reason: &str) {
        self.closed.send_if_modified(|c| {
            if c.is_none() {
                *c = Some(reason.to_string());
                true
            } else {
                false
            }
        });
        self.out.lock().unwrap_or_else(|p| p.into_inner()).take();
        let pending: Vec<_> = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, tx) in pending {
            let _ = tx.send(Err(RelayError::Closed(reason.to_string())));
        }
    }

    fn route_reply(&self, msg: Message) {
        let tx = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(msg.id_key());
        match tx {
            Some(tx) => {
                let _ = tx.send(Ok(msg));
            }
            None => {
                tracing::debug!(extension_id = %self.extension_id, id = msg.id_key(), kind = %msg.kind, "reply to no pending request")
            }
        }
    }
}

/// A cheap handle to relay requests to one host process.
#[derive(Clone)]
pub struct SessionHandle {
    shared: Arc<Shared>,
}

impl SessionHandle {
    pub fn is_ready(&self) -> bool {
        self.shared
            .out
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn out(&self) -> Result<Arc<Conn>, RelayError> {
        if let Some(reason) = self.shared.closed.borrow().clone() {
            return Err(RelayError::Closed(reason));
        }
        self.shared
            .out
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(RelayError::NotReady)
    }

    fn new_id(&self) -> Box<RawValue> {
        let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        RawValue::from_string(format!("\"hostd_{n}\"")).expect("JSON string")
    }

    /// Send a request and wait for its reply: the payload of `<type>-response`.
    pub async fn request(
        &self,
        kind: &str,
        payload: Box<RawValue>,
        timeout: Duration,
    ) -> Result<Box<RawValue>, RelayError> {
        let conn = self.out()?;
        let msg = Message {
            id: self.new_id(),
            kind: kind.to_string(),
            payload,
        };
        let key = msg.id_key().to_string();
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), tx);
        let forget = || {
            self.shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        };
        // The timeout covers the write too: a host that stopped reading
        // (full socket buffer) must time out, not block its caller forever.
        let exchange = async {
            conn.send(&msg).await?;
            rx.await
                .map_err(|_| RelayError::Closed("session ended".into()))?
        };
        let reply = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                forget();
                return Err(e);
            }
            Err(_) => {
                forget();
                return Err(RelayError::Timeout(crate::time::millis(timeout)));
            }
        };
        match reply.reply_to() {
            Some((_, true)) => {
                let message = serde_json::from_str::<serde_json::Value>(reply.payload.get())
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                    .unwrap_or_else(|| format!("{} from the host", reply.kind));
                Err(RelayError::Host {
                    message,
                    kind: reply.kind,
                    payload: reply.payload,
                })
            }
            _ => Ok(reply.payload),
        }
    }

    /// Send a one-way message; a host that does not read within `timeout`
    /// fails it.
    pub async fn send(
        &self,
        kind: &str,
        payload: Box<RawValue>,
        timeout: Duration,
    ) -> Result<(), RelayError> {
        let conn = self.out()?;
        let msg = Message {
            id: self.new_id(),
            kind: kind.to_string(),
            payload,
        };
        tokio::time::timeout(timeout, conn.send(&msg))
            .await
            .map_err(|_| RelayError::Timeout(crate::time::millis(timeout)))?
    }

    /// End the session (the host exited or is being stopped).
    pub fn close(&self, reason: &str) {
        self.shared.close(reason);
    }
}

/// The sockets of one host process, bound before it is spawned.
pub struct Prepared {
    listener: transport::Listener,
    /// Where the daemon listens (`DSCODE_INCOMING_IPC_URL`).
    pub incoming: PathBuf,
    /// Where the host must listen (`DSCODE_IPC_URL`).
    pub host: PathBuf,
    /// Accept only a peer in this process group (the host's), once known.
    host_group: Option<i32>,
}

impl Prepared {
    /// The host was spawned as the leader of group `pgid`: refuse
    /// connections from processes outside it (another host of the same
    /// user racing it to its socket).
    pub fn expect_group(&mut self, pgid: i32) {
        self.host_group = Some(pgid);
    }
}

/// Bind the daemon's end (see [`transport::bind`]).
pub fn prepare(incoming: &Path, host: &Path) -> std::io::Result<Prepared> {
    Ok(Prepared {
        listener: transport::bind(incoming, host)?,
        incoming: incoming.to_path_buf(),
        host: host.to_path_buf(),
        host_group: None,
    })
}

/// Start the session of host process `generation`: wait for it to connect
/// and say it is ready, connect back, relay, and send heartbeats.
pub fn start(
    prepared: Prepared,
    config: SessionConfig,
    extension_id: Arc<str>,
    generation: u64,
    events: mpsc::Sender<(u64, SessionEvent)>,
    requests: Arc<dyn HostRequests>,
) -> SessionHandle {
    let shared = Arc::new(Shared {
        extension_id,
        out: Mutex::new(None),
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        closed: watch::Sender::new(None),
        reported: AtomicBool::new(false),
        events,
        generation,
    });
    let handle = SessionHandle {
        shared: shared.clone(),
    };
    tokio::spawn(run(prepared, config, handle.clone(), requests));
    handle
}

async fn run(
    prepared: Prepared,
    config: SessionConfig,
    handle: SessionHandle,
    requests: Arc<dyn HostRequests>,
) {
    let host_group = prepared.host_group;
    let shared = handle.shared.clone();
    let id = shared.extension_id.clone();
    // The host's one connection to us.
    let stream = loop {
        if shared.closed.borrow().is_some() {
            return;
        }
        let accepted = tokio::select! {
            a = prepared.listener.accept() => a,
            () = closed(&shared) => return,
        };
        match accepted {
            Ok((_, peer)) if !peer.same_user => {
                tracing::warn!(extension_id = %id, "refused an IPC connection from another user")
            }
            // Another host (same user) must not take this host's channel.
            Ok((_, transport::Peer { pid: Some(pid), .. }))
                if host_group.is_some_and(|g| !transport::in_group(pid, g)) =>
            {
                tracing::warn!(extension_id = %id, peer_pid = pid, "refused an IPC connection from a process outside the host's process group")
            }
            Ok((s, _)) => break s,
            Err(e) => {
                tracing::warn!(extension_id = %id, error = %e, "IPC accept failed");
                return;
            }
        }
    };
    prepared.listener.close();
    let (read, write) = tokio::io::split(stream);
    let incoming = Arc::new(Conn {
        writer: tokio::sync::Mutex::new(write),
        max_frame: config.max_frame,
    });
    let mut frames = FramedRead::new(read, FrameCodec::new(config.max_frame));
    loop {
        let next = tokio::select! {
            f = frames.next() => f,
            () = closed(&shared) => return,
        };
        match next {
            Some(Ok(msg)) if msg.kind == "extension-host-ready" => {
                if handle.is_ready() {
                    continue;
                }
                match connect_back(&prepared.host).await {
                    Ok(out) => {
                        let (r, w) = tokio::io::split(out);
                        let conn = Arc::new(Conn {
                            writer: tokio::sync::Mutex::new(w),
                            max_frame: config.max_frame,
                        });
                        *shared.out.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
                        tokio::spawn(read_outgoing(
                            r,
                            conn,
                            handle.clone(),
                            config,
                            requests.clone(),
                        ));
                        if !config.heartbeat_interval.is_zero() {
                            tokio::spawn(heartbeat(handle.clone(), config));
                        }
                        shared.report(SessionEvent::Ready);
                    }
                    Err(e) => {
                        let reason = format!(
                            "cannot connect to the host's socket {}: {e}",
                            prepared.host.display()
                        );
                        fail(&shared, &reason);
                        return;
                    }
                }
            }
            Some(Ok(msg)) if msg.reply_to().is_some() => shared.route_reply(msg),
            Some(Ok(msg)) => requests.on_request(
                &id,
                msg,
                Replier {
                    conn: incoming.clone(),
                },
            ),
            Some(Err(e)) => {
                fail(&shared, &format!("malformed IPC frame: {e}"));
                return;
            }
            None => {
                shared.close("the host closed its channel");
                shared.report(SessionEvent::Closed);
                return;
            }
        }
    }
}

/// Resolves once the session is closed.
async fn closed(shared: &Shared) {
    let mut rx = shared.closed.subscribe();
    let _ = rx.wait_for(Option::is_some).await;
}

fn fail(shared: &Shared, reason: &str) {
    tracing::warn!(extension_id = %shared.extension_id, %reason, "IPC channel failed");
    shared.close(reason);
    shared.report(SessionEvent::Failed(reason.to_string()));
}

/// Connect to the host's socket, retrying with a bounded backoff (the host
/// may announce readiness a moment before its listener accepts).
async fn connect_back(path: &Path) -> std::io::Result<Stream> {
    let mut last = None;
    for attempt in 1..=10u64 {
        match transport::connect(path).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
    }
    Err(last.expect("at least one attempt"))
}

async fn read_outgoing(
    read: tokio::io::ReadHalf<Stream>,
    conn: Arc<Conn>,
    handle: SessionHandle,
    config: SessionConfig,
    requests: Arc<dyn HostRequests>,
) {
    let shared = handle.shared.clone();
    let mut frames = FramedRead::new(read, FrameCodec::new(config.max_frame));
    while let Some(next) = frames.next().await {
        match next {
            Ok(msg) if msg.reply_to().is_some() => shared.route_reply(msg),
            Ok(msg) => {
                requests.on_request(&shared.extension_id, msg, Replier { conn: conn.clone() })
            }
            Err(e) => {
                fail(&shared, &format!("malformed IPC frame: {e}"));
                return;
            }
        }
    }
    if shared.closed.borrow().is_none() {
        shared.close("the host closed its channel");
        shared.report(SessionEvent::Closed);
    }
}

async fn heartbeat(handle: SessionHandle, config: SessionConfig) {
    let empty = || RawValue::from_string("{}".into()).expect("JSON");
    loop {
        tokio::time::sleep(config.heartbeat_interval).await;
        match handle
            .request("ping", empty(), config.heartbeat_timeout)
            .await
        {
            // Any reply proves liveness, a `ping-error` included.
            Ok(_) | Err(RelayError::Host { .. }) => {}
            Err(RelayError::Timeout(ms)) => {
                fail(&handle.shared, &format!("unresponsive for {ms} ms"));
                return;
            }
            Err(_) => return,
        }
    }
}
