//! The session of one host process: the sockets bound before the spawn,
//! then two tasks at once (accept the host's connection, connect to the
//! host's socket), the handshake in either order, the frame reader and its
//! dispatch, and the heartbeats once ready.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::FramedRead;

use super::frame::{Frame, FrameCodec};
use super::relay::{Replier, SessionHandle};
use super::shared::{Conn, Link, Shared};
use super::transport::{self, Stream};
use super::{Counters, HostRequests, Message, READY, RelayError, SessionConfig, SessionEvent};

/// First pause between attempts to connect to the host's socket, doubled up
/// to [`CONNECT_RETRY_SLOW`] (on Linux with the host's directory watched, up
/// to `CONNECT_RETRY_WATCHED`: the timer is only a backstop). On Linux a change in the host's IPC directory
/// (its socket appearing) resets it, so the connect follows the host's
/// `listen` within a millisecond or two without polling meanwhile; elsewhere
/// the pause stays at `CONNECT_RETRY_FAST` for the first seconds. The
/// actor's ready timeout bounds the whole.
const CONNECT_RETRY_FIRST: Duration = Duration::from_millis(1);
#[cfg(not(target_os = "linux"))]
const CONNECT_RETRY_FAST: Duration = Duration::from_millis(4);
const CONNECT_RETRY_SLOW: Duration = Duration::from_millis(100);
/// The slowest pause while the host's IPC directory is watched (Linux).
#[cfg(target_os = "linux")]
const CONNECT_RETRY_WATCHED: Duration = Duration::from_secs(1);
#[cfg(not(target_os = "linux"))]
const CONNECT_FAST_FOR: Duration = Duration::from_secs(2);

impl SessionHandle {
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
                    // With the directory watched, the socket's creation is
                    // an event: the timer is only a backstop, so it slows
                    // further (a host that never listens, e.g. one without
                    // IPC, costs one attempt a second, not ten).
                    let slow = if watch.is_some() { CONNECT_RETRY_WATCHED } else { CONNECT_RETRY_SLOW };
                    pause = (pause * 2).min(slow);
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
