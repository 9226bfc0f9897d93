//! JSON-RPC 2.0 over one connection: one compact message per line each way.
//!
//! jsonrpsee's own server speaks only HTTP and WebSocket, so this module is
//! the line transport in front of its `Methods` (a [`MethodTable`]): it
//! frames lines, has each message's envelope checked and classified
//! (`envelope.rs`), and dispatches requests, giving each call what its
//! [`Access`] declares of the [`Connection`] (it knows no method names),
//! answers malformed ones with the right error, and writes every reply and
//! notification from one task per connection (inline when a call completes
//! at once, else through one bounded queue).
//!
//! Limits:
//! - a line over `max_message_bytes` is answered `-32600 request too large`
//!   and skipped, never buffered whole ([`crate::lines`]);
//! - at most `max_in_flight` requests of a connection run at once; later ones
//!   wait in the socket, none is dropped.
//!
//! Over 500 lines: the read/run/write loop and the batch runner share the
//! reply and permit types and are read together. Tests: `transport_tests.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use jsonrpsee::{ConnectionId, Extensions, MethodCallback, MethodResponse, MethodResponseNotifyTx};
use jsonrpsee_types::{ErrorObject, Id, Params};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::codec::FramedRead;

use super::connection::{Access, CallId, Connection, MethodTable};
use super::envelope::{Call, Invalid, check, classify, error_line};
use crate::lines::{BoundedLines, Line};
use crate::protocol::codes;

/// Replies and notifications queued per connection before producers wait.
const OUT_QUEUE: usize = 256;
/// Largest single response (a big `host.logs`).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Entries of one batch run at once (the default per-connection in-flight
/// limit).
const BATCH_CONCURRENCY: usize = 64;

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_in_flight: usize,
    /// Close a connection that has sent no complete line for this long while
    /// it has no request in flight and no subscription; `None` never does.
    pub idle_timeout: Option<std::time::Duration>,
}

/// What the accept loop may know about a live connection: whether it is
/// idle (and since when), and a way to close it to make room.
#[derive(Debug, Default)]
pub struct Presence {
    /// When its last complete line arrived (or it connected), ms since the
    /// daemon started.
    last_line_ms: std::sync::atomic::AtomicU64,
    /// Requests in flight plus subscriptions: not idle while above zero.
    engaged: std::sync::atomic::AtomicUsize,
    evict: tokio::sync::Notify,
    /// Already asked to close: not a candidate again.
    evicting: std::sync::atomic::AtomicBool,
}

impl Presence {
    /// `Some(since)` (ms) when the connection holds nothing: no request in
    /// flight, no subscription.
    pub fn idle_since(&self) -> Option<u64> {
        let since = self.last_line_ms.load(Ordering::Relaxed);
        (self.engaged.load(Ordering::Relaxed) == 0
            && !self.evicting.load(Ordering::Relaxed)
            && now_ms().saturating_sub(since) >= MIN_IDLE_TO_EVICT_MS)
            .then_some(since)
    }

    /// Ask its task to close the connection (it is idle, and a new one
    /// needs its slot).
    pub fn evict(&self) {
        self.evicting.store(true, Ordering::Relaxed);
        self.evict.notify_one();
    }

    fn touch(&self) {
        self.last_line_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// A connection younger (or more recently active) than this is never closed
/// to make room: a new client has that long to send its first line.
const MIN_IDLE_TO_EVICT_MS: u64 = 200;

/// Milliseconds since the first call: a clock for idleness.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    crate::time::millis(START.get_or_init(std::time::Instant::now).elapsed())
}

/// What the dispatcher needs for one connection.
#[derive(Clone)]
pub struct Dispatcher {
    methods: MethodTable,
    conn_id: ConnectionId,
    conn: Arc<Connection>,
}

/// A reply to write, and who to tell once it is queued.
pub struct Reply {
    pub json: Box<RawValue>,
    pub on_sent: Vec<MethodResponseNotifyTx>,
}

impl Reply {
    fn plain(json: Box<RawValue>) -> Self {
        Reply {
            json,
            on_sent: Vec::new(),
        }
    }

    fn from_response(r: MethodResponse) -> Self {
        let (json, notify, _) = r.into_parts();
        Reply {
            json,
            on_sent: notify.into_iter().collect(),
        }
    }
}

/// The line sent to a connection refused for load.
pub fn too_many_connections_line() -> String {
    let mut s = error_line(
        Id::Null,
        codes::TOO_MANY_CONNECTIONS,
        "too many connections",
    )
    .get()
    .to_string();
    s.push('\n');
    s
}

impl Dispatcher {
    pub fn new(methods: MethodTable, conn_id: usize, conn: Arc<Connection>) -> Self {
        Dispatcher {
            methods,
            conn_id: ConnectionId(conn_id),
            conn,
        }
    }

    /// Handle one line. Returns the reply to write, if any.
    pub async fn handle_line(&self, line: &[u8]) -> Option<Reply> {
        let text = match std::str::from_utf8(line) {
            Ok(t) => t.trim(),
            Err(e) => {
                return Some(Reply::plain(
                    Invalid::Parse(format!("invalid UTF-8: {e}")).into_json(),
                ));
            }
        };
        if text.is_empty() {
            return None;
        }
        if !text.starts_with('[') {
            return self.handle_one(text, false).await;
        }
        let items: Vec<&RawValue> = match serde_json::from_str(text) {
            Ok(items) => items,
            Err(e) => return Some(Reply::plain(classify(&e).into_json())),
        };
        if items.is_empty() {
            return Some(Reply::plain(
                Invalid::Request(Id::Null, "empty batch").into_json(),
            ));
        }
        // Up to BATCH_CONCURRENCY entries at a time (a batch of 100 stops
        // runs them together, as a connection's in-flight requests would):
        // the next entry starts as soon as any running one finishes, and
        // the replies are put back in the batch's order at the end. Once
        // the replies add up past the response limit, no further entry is
        // started and every entry without a kept reply is answered with an
        // error instead (its reply could not be sent anyway).
        let mut running = futures_util::stream::FuturesUnordered::new();
        let mut kept: Vec<Option<Option<Reply>>> = (0..items.len()).map(|_| None).collect();
        let mut next = 0;
        let mut total = 0usize;
        let mut over = false;
        loop {
            while !over && running.len() < BATCH_CONCURRENCY && next < items.len() {
                let i = next;
                let entry = self.handle_one(items[i].get(), true);
                running.push(async move { (i, entry.await) });
                next += 1;
            }
            let Some((i, r)) = running.next().await else {
                break;
            };
            let Some(r) = r else {
                // A notification: run, nothing to send.
                kept[i] = Some(None);
                continue;
            };
            total += r.json.get().len() + 1;
            if over || total > MAX_RESPONSE_BYTES {
                // Entries already running finish; their replies are not
                // kept.
                over = true;
                for n in r.on_sent {
                    n.notify(false);
                }
                continue;
            }
            kept[i] = Some(Some(r));
        }
        drop(running);
        let mut jsons = Vec::new();
        let mut on_sent = Vec::new();
        for (item, k) in items.iter().zip(kept) {
            match k {
                Some(Some(r)) => {
                    jsons.push(r.json);
                    on_sent.extend(r.on_sent);
                }
                Some(None) => {}
                None if over => {
                    let id = check(item.get())
                        .ok()
                        .and_then(|c| c.id)
                        .map(Id::into_owned);
                    if let Some(id) = id {
                        jsons.push(error_line(
                            id,
                            codes::INVALID_REQUEST_CODE,
                            "batch reply over the 64 MiB limit: no reply for this entry (entries not yet started were not run)",
                        ));
                    }
                }
                None => {}
            }
        }
        if jsons.is_empty() {
            return None;
        }
        Some(Reply {
            json: serde_json::value::to_raw_value(&jsons).expect("raw values serialize"),
            on_sent,
        })
    }

    async fn handle_one(&self, text: &str, in_batch: bool) -> Option<Reply> {
        let call = match check(text) {
            Ok(c) => c,
            Err(e) => return Some(Reply::plain(e.into_json())),
        };
        let is_notification = call.id.is_none();
        let response = self.dispatch(call, in_batch).await?;
        if is_notification {
            return None;
        }
        Some(Reply::from_response(response))
    }

    async fn dispatch(&self, call: Call<'_>, in_batch: bool) -> Option<MethodResponse> {
        let id = call.id.clone().unwrap_or(Id::Null).into_owned();
        let access = self.methods.access(&call.method);
        if access == Access::Subscribe {
            if in_batch {
                return Some(
                    Invalid::Request(id, "subscriptions are not allowed in a batch")
                        .into_response(),
                );
            }
            // A subscription nobody can hear about is ignored.
            call.id.as_ref()?;
        }
        let params = Params::new(call.params).into_owned();
        let Some(cb) = self.methods.methods().method(&call.method) else {
            return Some(MethodResponse::error(
                id,
                ErrorObject::from(jsonrpsee_types::ErrorCode::MethodNotFound),
            ));
        };
        let mut ext = Extensions::new();
        // Only the calls that declared it get the connection (and the
        // allocation).
        match access {
            Access::Nothing => {}
            Access::Subscribe | Access::Connection => {
                ext.insert(self.conn.clone());
            }
            Access::ConnectionAndCallId => {
                ext.insert(self.conn.clone());
                ext.insert(CallId(id.clone()));
            }
        }
        Some(match cb {
            MethodCallback::Sync(f) => f(id, params, MAX_RESPONSE_BYTES, ext),
            MethodCallback::Async(f) => f(id, params, self.conn_id, MAX_RESPONSE_BYTES, ext).await,
            MethodCallback::Unsubscription(f) => {
                f(id, params, self.conn_id, MAX_RESPONSE_BYTES, ext)
            }
            // Subscriptions are plain async methods here (see methods::subscribe).
            MethodCallback::Subscription(_) => MethodResponse::error(
                id,
                ErrorObject::from(jsonrpsee_types::ErrorCode::InternalError),
            ),
        })
    }
}

/// Serve one accepted connection until the client goes away or `shutdown`
/// turns true. On shutdown every request already read is answered and
/// flushed before the connection closes.
///
/// One task reads, runs the calls and writes: a call that completes without
/// waiting is answered inline; a call that waits (a relayed `host.request`
/// waiting for its host, a `host.stop`) is polled by this same task among
/// its others, so its reply is written from here the moment it is woken (no
/// hand-off to another task and back). Subscription notifications come
/// through the bounded outgoing queue that this task drains. Calls never end
/// with the connection: those still running when it closes are handed to a
/// task of their own that runs them to completion, as a spawned call would.
pub async fn serve<S>(
    stream: S,
    methods: MethodTable,
    conn_id: usize,
    limits: Limits,
    presence: Arc<Presence>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, mut write) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Box<RawValue>>(OUT_QUEUE);
    let conn = Arc::new(Connection::new(tx));
    // Weak: the connection (its queue's sender) must go once the
    // dispatcher does, so the queue can close.
    let conn_weak = Arc::downgrade(&conn);
    let dispatcher = Dispatcher::new(methods, conn_id, conn);
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
    presence.touch();
    // A permit taken before the next line is read: while none is free the
    // loop still drains the outgoing queue (the requests that hold the
    // permits may be waiting on it), so the connection never wedges.
    let mut permit: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut frames = FramedRead::new(read, BoundedLines::new(limits.max_message_bytes));
    let mut out = Out::default();
    let mut reading = !*shutdown.borrow();
    let mut shutting_down = !reading;
    let mut dispatcher = Some(dispatcher);
    // Calls that waited at their first poll, each with its in-flight permit.
    let mut calls = Calls::new();
    let mut broken = false;
    while !shutting_down {
        if !out.buf.is_empty() && (out.write(&mut write).await).is_err() {
            broken = true;
            break;
        }
        if !reading {
            // The client closed its side: its subscriptions end, and dropping
            // our dispatcher (the queue's sender) lets the queue close once
            // every call still running has been answered (a last request
            // without a newline is still answered).
            if let Some(d) = dispatcher.take() {
                d.conn.cancel_all();
            }
        }
        // Requests in flight (the permit held for the next line is not
        // one) and subscriptions.
        let engaged =
            limits.max_in_flight - in_flight.available_permits() - usize::from(permit.is_some())
                + conn_weak.upgrade().map_or(0, |c| c.subscription_count());
        presence.engaged.store(engaged, Ordering::Relaxed);
        let idle_at = limits
            .idle_timeout
            .filter(|_| engaged == 0 && reading)
            .map(|t| {
                let since = presence.last_line_ms.load(Ordering::Relaxed);
                let left = (since + crate::time::millis(t)).saturating_sub(now_ms());
                tokio::time::Instant::now() + std::time::Duration::from_millis(left)
            });
        tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some(m) => {
                    out.push(&m);
                    while let Ok(m) = rx.try_recv() {
                        out.push(&m);
                        if out.buf.len() > 64 * 1024 { break; }
                    }
                }
                None => break,
            },
            Some((reply, permit)) = calls.next(), if !calls.is_empty() => {
                drop(permit);
                if let Some(reply) = reply {
                    out.push_reply(reply);
                }
            },
            changed = shutdown.changed() => {
                let stop = changed.is_err() || *shutdown.borrow();
                if stop {
                    shutting_down = true;
                    break;
                }
            },
            () = presence.evict.notified() => {
                if presence.engaged.load(Ordering::Relaxed) == 0 {
                    tracing::info!(conn_id, "closed an idle connection to make room for a new one");
                    break;
                }
            },
            () = async { tokio::time::sleep_until(idle_at.expect("guarded")).await }, if idle_at.is_some() => {
                tracing::info!(conn_id, "closed a connection idle past idle_timeout_ms");
                break;
            },
            p = in_flight.clone().acquire_owned(), if reading && permit.is_none() => {
                match p {
                    Ok(p) => permit = Some(p),
                    Err(_) => break,
                }
            },
            frame = frames.next(), if reading && permit.is_some() => {
                let bytes = match frame {
                    None => { reading = false; continue; }
                    Some(Err(e)) => {
                        tracing::debug!(conn_id, error = %e, "connection read failed");
                        reading = false;
                        continue;
                    }
                    Some(Ok(Line::TooLong(_))) => {
                        out.push(&error_line(Id::Null, codes::INVALID_REQUEST_CODE, "request too large"));
                        continue;
                    }
                    Some(Ok(Line::Complete(b))) => b.freeze(),
                };
                presence.touch();
                let Some(permit) = permit.take() else { break };
                let Some(d) = dispatcher.clone() else { break };
                let mut work: Waiting = Box::pin(async move { (d.handle_line(&bytes).await, permit) });
                match futures_util::FutureExt::now_or_never(&mut work) {
                    // Done without waiting: answer inline.
                    Some((reply, permit)) => {
                        drop(permit);
                        if let Some(reply) = reply {
                            out.push_reply(reply);
                        }
                    }
                    None => calls.push(work),
                }
            },
        }
    }
    if shutting_down {
        // Every request read so far has queued its reply once its permit is
        // back; then flush and close.
        dispatcher.take();
        let all = in_flight
            .clone()
            .acquire_many_owned(limits.max_in_flight as u32);
        tokio::pin!(all);
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(1));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut all => break,
                () = &mut deadline => break,
                Some(m) = rx.recv() => out.push(&m),
                Some((reply, permit)) = calls.next(), if !calls.is_empty() => {
                    drop(permit);
                    if let Some(reply) = reply {
                        out.push_reply(reply);
                    }
                }
            }
        }
        while let Ok(m) = rx.try_recv() {
            out.push(&m);
        }
        let _ = out.write(&mut write).await;
    }
    if !calls.is_empty() {
        // The connection is gone (or going) but its calls are not cancelled:
        // a stop or a start runs to its end, replies going nowhere.
        tokio::spawn(async move {
            while let Some((reply, _permit)) = calls.next().await {
                for n in reply.into_iter().flat_map(|r| r.on_sent) {
                    n.notify(false);
                }
            }
        });
    }
    if !broken {
        let _ = write.shutdown().await;
    }
}

/// One call that waited at its first poll: its reply (if any) and the
/// in-flight permit it holds until then.
type Waiting = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = (Option<Reply>, tokio::sync::OwnedSemaphorePermit)> + Send,
    >,
>;
type Calls = futures_util::stream::FuturesUnordered<Waiting>;

/// Bytes waiting to be written, one message per line.
#[derive(Default)]
struct Out {
    buf: Vec<u8>,
}

impl Out {
    fn push(&mut self, m: &RawValue) {
        self.buf.extend_from_slice(m.get().as_bytes());
        self.buf.push(b'\n');
    }

    /// A call's reply, then word to whoever waits for it to be queued (in
    /// order before anything it causes).
    fn push_reply(&mut self, reply: Reply) {
        self.push(&reply.json);
        for n in reply.on_sent {
            n.notify(true);
        }
    }

    async fn write<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(&self.buf).await?;
        w.flush().await?;
        self.buf.clear();
        Ok(())
    }
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;
