//! The per-host IPC channel that DSCode extension hosts speak; the wire
//! protocol is `proto-docs/ext-host-protocol.md`.
//!
//! Right after the spawn, two things happen at once: the daemon accepts the
//! host's connection on its incoming socket (`DSCODE_INCOMING_IPC_URL`) and
//! connects to the host's own socket (`DSCODE_IPC_URL`), retrying while it
//! does not exist yet. The real DSCode host waits for the second before it
//! does the first; older hosts do the first and say ready before they
//! listen. The session is ready once both connections stand and the host
//! has said `extension-host-ready` (answered at once with
//! `extension-host-ready-response {"success": true}`).
//!
//! A [`Session`](SessionHandle) is one host process's channel. It knows
//! frames, ids and sockets; it reports `Ready`, `Failed` and `Closed` to the
//! host's actor and hands host-originated requests to a [`HostRequests`]
//! sink. It knows nothing about host states or JSON-RPC.

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

use frame::{Frame, FrameCodec};
pub use frame::{FrameError, Message};
use transport::Stream;
pub use transport::ipc_paths;

use crate::protocol::IpcCounts;

/// The host's readiness request.
pub const READY: &str = "extension-host-ready";
/// First pause between attempts to connect to the host's socket, doubled up
/// to [`CONNECT_RETRY_SLOW`]. On Linux a change in the host's IPC directory
/// (its socket appearing) resets it, so the connect follows the host's
/// `listen` within a millisecond or two without polling meanwhile; elsewhere
/// the pause stays at [`CONNECT_RETRY_FAST`] for the first seconds. The
/// actor's ready timeout bounds the whole.
const CONNECT_RETRY_FIRST: Duration = Duration::from_millis(1);
#[cfg(not(target_os = "linux"))]
const CONNECT_RETRY_FAST: Duration = Duration::from_millis(4);
const CONNECT_RETRY_SLOW: Duration = Duration::from_millis(100);
#[cfg(not(target_os = "linux"))]
const CONNECT_FAST_FOR: Duration = Duration::from_secs(2);

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

/// What a host's channels have seen, over all its processes (`host.usage`).
#[derive(Debug, Default)]
pub struct Counters {
    oversize_frames: AtomicU64,
    host_requests: AtomicU64,
    host_requests_refused: AtomicU64,
    partials_dropped: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> IpcCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IpcCounts {
            oversize_frames: get(&self.oversize_frames),
            host_requests: get(&self.host_requests),
            host_requests_refused: get(&self.host_requests_refused),
            partials_dropped: get(&self.partials_dropped),
        }
    }

    /// A host request was refused because its queue was full.
    pub fn refused(&self) {
        self.host_requests_refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where host-originated requests go.
pub trait HostRequests: Send + Sync + 'static {
    fn on_request(&self, extension_id: &str, msg: Message, reply: Replier);
}

/// Receives a relayed request's `-partial` payloads; returns `false` when
/// it had to drop one.
pub type PartialSink = Box<dyn Fn(Box<RawValue>) -> bool + Send + Sync>;

/// One direction of a channel, writable by many tasks.
struct Conn {
    writer: tokio::sync::Mutex<WriteHalf<Stream>>,
    max_frame: usize,
}

impl Conn {
    fn new(writer: WriteHalf<Stream>, max_frame: usize) -> Arc<Conn> {
        Arc::new(Conn {
            writer: tokio::sync::Mutex::new(writer),
            max_frame,
        })
    }

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

struct PendingRelay {
    done: oneshot::Sender<Result<Message, RelayError>>,
    partial: Option<PartialSink>,
}

/// Removes one relayed request's entry from the pending table when dropped.
struct Forget<'a> {
    table: &'a Mutex<HashMap<String, PendingRelay>>,
    key: String,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// The two halves of the handshake.
#[derive(Default)]
struct Link {
    /// The connection to the host's socket, once made.
    out: Option<Arc<Conn>>,
    /// The host said `extension-host-ready`.
    said_ready: bool,
}

struct Shared {
    extension_id: Arc<str>,
    config: SessionConfig,
    link: Mutex<Link>,
    /// Both halves stand: requests may be relayed.
    ready: AtomicBool,
    pending: Mutex<HashMap<String, PendingRelay>>,
    next_id: AtomicU64,
    /// Why the session ended, once it has.
    closed: watch::Sender<Option<String>>,
    reported: AtomicBool,
    events: mpsc::Sender<(u64, SessionEvent)>,
    generation: u64,
    counters: Arc<Counters>,
}

impl Shared {
    fn report(&self, ev: SessionEvent) {
        if matches!(ev, SessionEvent::Ready) || !self.reported.swap(true, Ordering::SeqCst) {
            let _ = self.events.try_send((self.generation, ev));
        }
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, PendingRelay>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
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
        self.ready.store(false, Ordering::SeqCst);
        self.link().out.take();
        let pending: Vec<_> = self.pending().drain().collect();
        for (_, p) in pending {
            let _ = p.done.send(Err(RelayError::Closed(reason.to_string())));
        }
    }

    fn route_reply(&self, msg: Message) {
        match self.pending().remove(msg.id_key()) {
            Some(p) => {
                let _ = p.done.send(Ok(msg));
            }
            None => {
                tracing::debug!(extension_id = %self.extension_id, id = msg.id_key(), kind = %msg.kind, "reply to no pending request")
            }
        }
    }

    /// A `<type>-partial`: to the waiting requester's sink, if it has one.
    fn route_partial(&self, msg: Message) {
        let pending = self.pending();
        let delivered = match pending.get(msg.id_key()) {
            Some(PendingRelay {
                partial: Some(sink),
                ..
            }) => sink(msg.payload),
            Some(_) => true,
            None => {
                tracing::debug!(extension_id = %self.extension_id, id = msg.id_key(), kind = %msg.kind, "partial for no pending request");
                true
            }
        };
        if !delivered {
            self.counters
                .partials_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn skipped(&self, len: usize) {
        self.counters
            .oversize_frames
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(extension_id = %self.extension_id, bytes = len, max = self.config.max_frame, "skipped an IPC frame over the size limit");
    }
}

/// A cheap handle to relay requests to one host process.
#[derive(Clone)]
pub struct SessionHandle {
    shared: Arc<Shared>,
}

impl SessionHandle {
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst)
    }

    fn out(&self) -> Result<Arc<Conn>, RelayError> {
        if let Some(reason) = self.shared.closed.borrow().clone() {
            return Err(RelayError::Closed(reason));
        }
        if !self.is_ready() {
            return Err(RelayError::NotReady);
        }
        self.shared.link().out.clone().ok_or(RelayError::NotReady)
    }

    fn new_id(&self) -> Box<RawValue> {
        let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        RawValue::from_string(format!("\"hostd_{n}\"")).expect("JSON string")
    }

    /// One half of the handshake is done: report ready once both are.
    fn handshake(&self, f: impl FnOnce(&mut Link)) {
        let both = {
            let mut link = self.shared.link();
            f(&mut link);
            link.out.is_some() && link.said_ready
        };
        if both
            && self.shared.closed.borrow().is_none()
            && !self.shared.ready.swap(true, Ordering::SeqCst)
        {
            if !self.shared.config.heartbeat_interval.is_zero() {
                tokio::spawn(heartbeat(self.clone()));
            }
            self.shared.report(SessionEvent::Ready);
        }
    }

    /// Send a request and wait for its reply: the payload of `<type>-response`.
    /// `<type>-partial` payloads before it go to `partial`, if given.
    pub async fn request(
        &self,
        kind: &str,
        payload: Box<RawValue>,
        timeout: Duration,
        partial: Option<PartialSink>,
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
            .pending()
            .insert(key.clone(), PendingRelay { done: tx, partial });
        // However this call ends (reply, error, timeout, or its future
        // dropped because the client's connection closed), its entry goes:
        // the table holds only requests somebody still waits for.
        let _forget = Forget {
            table: &self.shared.pending,
            key,
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
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(RelayError::Timeout(crate::time::millis(timeout))),
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
    /// The host's uid, when it runs as another user than the daemon.
    host_uid: Option<u32>,
}

impl Prepared {
    /// The host was spawned as the leader of group `pgid`: refuse
    /// connections from processes outside it (another host of the same
    /// user racing it to its socket), on both sockets.
    pub fn expect_group(&mut self, pgid: i32) {
        self.host_group = Some(pgid);
    }
}

/// Bind the daemon's end (see [`transport::bind`]); with `owner`, the
/// host's IPC directory and the daemon's socket in it belong to the user the
/// host runs as.
pub fn prepare(
    incoming: &Path,
    host: &Path,
    owner: Option<crate::spawn::HostUser>,
) -> std::io::Result<Prepared> {
    let listener = transport::bind(incoming, host)?;
    if let Some(user) = owner {
        if let Some(dir) = incoming.parent() {
            user.own(dir)?;
        }
        user.own(incoming)?;
    }
    Ok(Prepared {
        listener,
        incoming: incoming.to_path_buf(),
        host: host.to_path_buf(),
        host_group: None,
        host_uid: owner.map(|u| u.uid),
    })
}

/// What a session is made of besides its sockets.
pub struct SessionParts {
    pub config: SessionConfig,
    pub extension_id: Arc<str>,
    /// The host process's generation; events carry it.
    pub generation: u64,
    pub events: mpsc::Sender<(u64, SessionEvent)>,
    pub requests: Arc<dyn HostRequests>,
    pub counters: Arc<Counters>,
}

/// Start the session of one host process: accept its connection and
/// connect to its socket at once, answer its ready request, relay, and send
/// heartbeats once ready.
pub fn start(prepared: Prepared, parts: SessionParts) -> SessionHandle {
    let shared = Arc::new(Shared {
        extension_id: parts.extension_id,
        config: parts.config,
        link: Mutex::new(Link::default()),
        ready: AtomicBool::new(false),
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        closed: watch::Sender::new(None),
        reported: AtomicBool::new(false),
        events: parts.events,
        generation: parts.generation,
        counters: parts.counters,
    });
    let handle = SessionHandle { shared };
    tokio::spawn(connect_to_host(
        prepared.host.clone(),
        (prepared.host_group, prepared.host_uid),
        handle.clone(),
        parts.requests.clone(),
    ));
    tokio::spawn(accept_host(prepared, handle.clone(), parts.requests));
    handle
}

/// Whether a peer may speak for the host: the daemon's user (or the host's
/// own, with `run_as`), and in the host's process group once that is known.
fn trusted(peer: transport::Peer, (host_group, host_uid): Expect) -> Result<(), String> {
    if !peer.same_user && (host_uid.is_none() || peer.uid != host_uid) {
        return Err("from another user".into());
    }
    match (peer.pid, host_group) {
        (Some(pid), Some(g)) if !transport::in_group(pid, g) => {
            Err(format!("from pid {pid}, outside the host's process group"))
        }
        _ => Ok(()),
    }
}

/// The incoming half: the host's one connection to the daemon's socket.
async fn accept_host(prepared: Prepared, handle: SessionHandle, requests: Arc<dyn HostRequests>) {
    let shared = handle.shared.clone();
    let id = shared.extension_id.clone();
    let stream = loop {
        let accepted = tokio::select! {
            a = prepared.listener.accept() => a,
            () = closed(&shared) => return,
        };
        match accepted {
            Ok((s, peer)) => match trusted(peer, (prepared.host_group, prepared.host_uid)) {
                Ok(()) => break s,
                Err(why) => {
                    tracing::warn!(extension_id = %id, "refused an IPC connection {why}")
                }
            },
            Err(e) => {
                tracing::warn!(extension_id = %id, error = %e, "IPC accept failed");
                return;
            }
        }
    };
    prepared.listener.close();
    let (read, write) = tokio::io::split(stream);
    let conn = Conn::new(write, shared.config.max_frame);
    read_frames(read, conn, handle, requests).await;
}

/// The outgoing half: connect to the host's socket, retrying (with a short
/// doubling pause) while it does not exist or is not listening yet.
/// Who the host's peer must be: its process group and, with `run_as`, its uid.
type Expect = (Option<i32>, Option<u32>);

async fn connect_to_host(
    path: PathBuf,
    expect: Expect,
    handle: SessionHandle,
    requests: Arc<dyn HostRequests>,
) {
    let shared = handle.shared.clone();
    let mut pause = CONNECT_RETRY_FIRST;
    #[cfg(not(target_os = "linux"))]
    let started = tokio::time::Instant::now();
    // Created before the first attempt: a socket made after it is an event.
    #[cfg(target_os = "linux")]
    let watch = path.parent().and_then(|dir| {
        use nix::sys::inotify::AddWatchFlags as F;
        crate::inotify::DirWatch::new(dir, F::IN_CREATE | F::IN_MOVED_TO | F::IN_ATTRIB).ok()
    });
    let stream = loop {
        let attempt = tokio::select! {
            r = transport::connect(&path) => r,
            () = closed(&shared) => return,
        };
        if let Ok((s, peer)) = attempt {
            match trusted(peer, expect) {
                Ok(()) => break s,
                Err(why) => {
                    tracing::warn!(extension_id = %shared.extension_id, "refused the host's socket: it is served {why}")
                }
            }
        }
        #[cfg(target_os = "linux")]
        {
            let changed = async {
                match &watch {
                    Some(w) => w.changed().await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                // The directory changed (the socket appeared): retry at once,
                // then quickly (it may be bound but not yet listening).
                () = changed => pause = CONNECT_RETRY_FIRST,
                () = tokio::time::sleep(pause) => {
                    pause = (pause * 2).min(CONNECT_RETRY_SLOW);
                }
                () = closed(&shared) => return,
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = closed(&shared) => return,
            }
            pause = if started.elapsed() < CONNECT_FAST_FOR {
                (pause * 2).min(CONNECT_RETRY_FAST)
            } else {
                CONNECT_RETRY_SLOW
            };
        }
    };
    let (read, write) = tokio::io::split(stream);
    let conn = Conn::new(write, shared.config.max_frame);
    handle.handshake(|link| link.out = Some(conn.clone()));
    read_frames(read, conn, handle, requests).await;
}

/// Read one connection's frames until it ends; either connection may carry
/// replies, partials and host requests.
async fn read_frames(
    read: tokio::io::ReadHalf<Stream>,
    conn: Arc<Conn>,
    handle: SessionHandle,
    requests: Arc<dyn HostRequests>,
) {
    let shared = handle.shared.clone();
    let mut frames = FramedRead::new(read, FrameCodec::new(shared.config.max_frame));
    loop {
        let next = tokio::select! {
            f = frames.next() => f,
            () = closed(&shared) => return,
        };
        match next {
            Some(Ok(Frame::Skipped(len))) => shared.skipped(len),
            Some(Ok(Frame::Message(msg))) => dispatch(&handle, msg, &conn, &requests),
            Some(Err(e)) => {
                fail(&shared, &format!("malformed IPC frame: {e}"));
                return;
            }
            None => {
                if shared.closed.borrow().is_none() {
                    shared.close("the host closed its channel");
                    shared.report(SessionEvent::Closed);
                }
                return;
            }
        }
    }
}

fn dispatch(
    handle: &SessionHandle,
    msg: Message,
    conn: &Arc<Conn>,
    requests: &Arc<dyn HostRequests>,
) {
    let shared = &handle.shared;
    if msg.reply_to().is_some() {
        shared.route_reply(msg);
    } else if msg.kind.ends_with("-partial") {
        shared.route_partial(msg);
    } else if msg.kind == READY {
        // Answered at once: the real host waits for this reply (30 s
        // without it) before it loads its extensions.
        let reply = Message {
            id: msg.id,
            kind: format!("{READY}-response"),
            payload: RawValue::from_string(r#"{"success":true}"#.into()).expect("JSON"),
        };
        let conn = conn.clone();
        tokio::spawn(async move { conn.send(&reply).await });
        handle.handshake(|link| link.said_ready = true);
    } else {
        shared
            .counters
            .host_requests
            .fetch_add(1, Ordering::Relaxed);
        requests.on_request(&shared.extension_id, msg, Replier { conn: conn.clone() });
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

async fn heartbeat(handle: SessionHandle) {
    let config = handle.shared.config;
    let empty = || RawValue::from_string("{}".into()).expect("JSON");
    loop {
        tokio::time::sleep(config.heartbeat_interval).await;
        match handle
            .request("ping", empty(), config.heartbeat_timeout, None)
            .await
        {
            // Any reply proves liveness, a `ping-error` included (the real
            // host has no `ping` handler).
            Ok(_) | Err(RelayError::Host { .. }) => {}
            Err(RelayError::Timeout(ms)) => {
                fail(&handle.shared, &format!("unresponsive for {ms} ms"));
                return;
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_relay_leaves_no_pending_entry() {
        let table = Mutex::new(HashMap::new());
        let (done, _rx) = oneshot::channel();
        let entry = PendingRelay {
            done,
            partial: None,
        };
        table.lock().unwrap().insert("7".to_string(), entry);
        let forget = Forget {
            table: &table,
            key: "7".to_string(),
        };
        assert_eq!(table.lock().unwrap().len(), 1);
        // The request's future is dropped (its client went away).
        drop(forget);
        assert!(table.lock().unwrap().is_empty());
    }
}
