//! The state one session's tasks and handles share: the writable halves of
//! its connections, the two halves of the handshake, the table of relayed
//! requests waiting for a reply, the close signal, and the report to the
//! host's actor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch};

use super::frame::{self, Message};
use super::transport::Stream;
use super::{Counters, PartialSink, RelayError, SessionConfig, SessionEvent};

/// One direction of a channel, writable by many tasks.
pub(super) struct Conn {
    writer: tokio::sync::Mutex<WriteHalf<Stream>>,
    max_frame: usize,
}

impl Conn {
    pub(super) fn new(writer: WriteHalf<Stream>, max_frame: usize) -> Arc<Conn> {
        Arc::new(Conn {
            writer: tokio::sync::Mutex::new(writer),
            max_frame,
        })
    }

    pub(super) async fn send(&self, msg: &Message) -> Result<(), RelayError> {
        let bytes =
            frame::encode(msg, self.max_frame).map_err(|e| RelayError::Encode(e.to_string()))?;
        let mut w = self.writer.lock().await;
        w.write_all(&bytes)
            .await
            .map_err(|e| RelayError::Closed(e.to_string()))
    }
}

pub(super) struct PendingRelay {
    pub(super) done: oneshot::Sender<Result<Message, RelayError>>,
    pub(super) partial: Option<PartialSink>,
}

/// The two halves of the handshake.
#[derive(Default)]
pub(super) struct Link {
    /// The connection to the host's socket, once made.
    pub(super) out: Option<Arc<Conn>>,
    /// The host said `extension-host-ready`.
    pub(super) said_ready: bool,
}

pub(super) struct Shared {
    pub(super) extension_id: Arc<str>,
    pub(super) config: SessionConfig,
    pub(super) link: Mutex<Link>,
    /// Both halves stand: requests may be relayed.
    pub(super) ready: AtomicBool,
    pub(super) pending: Mutex<HashMap<String, PendingRelay>>,
    pub(super) next_id: AtomicU64,
    /// Why the session ended, once it has.
    pub(super) closed: watch::Sender<Option<String>>,
    pub(super) reported: AtomicBool,
    pub(super) events: mpsc::Sender<(u64, SessionEvent)>,
    pub(super) generation: u64,
    pub(super) counters: Arc<Counters>,
}

impl Shared {
    pub(super) fn report(&self, ev: SessionEvent) {
        if matches!(ev, SessionEvent::Ready) || !self.reported.swap(true, Ordering::SeqCst) {
            let _ = self.events.try_send((self.generation, ev));
        }
    }

    pub(super) fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, PendingRelay>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Close the session: every pending request fails at once.
    pub(super) fn close(&self, reason: &str) {
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

    pub(super) fn route_reply(&self, msg: Message) {
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
    pub(super) fn route_partial(&self, msg: Message) {
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

    pub(super) fn skipped(&self, len: usize) {
        self.counters
            .oversize_frames
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(extension_id = %self.extension_id, bytes = len, max = self.config.max_frame, "skipped an IPC frame over the size limit");
    }
}
