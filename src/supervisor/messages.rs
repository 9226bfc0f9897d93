//! Host-originated requests: fanned out to the editors that subscribed, and
//! answered by the first of them to respond — or by the daemon itself with
//! `<type>-error` when none answers in time.
//!
//! A request that arrives while no editor is attached waits in its host's
//! queue and goes to the first editor that attaches (a host starts before
//! any editor; the real DSCode host exits if its start-up requests fail).
//! Every request ends with exactly one answer: an editor's, or `timed out`
//! at its deadline. Each host's waiting requests are bounded by count and
//! bytes; past either bound the host gets `<type>-error` at once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::broadcast;

use super::events::{Filter, filter_matches};
use crate::ipc::{Message, Replier};
use crate::protocol::HostMessage;

/// Messages a subscriber may fall behind before it is told it lagged.
const MESSAGE_QUEUE: usize = 1024;

/// How long host-originated requests wait, and how many may wait per host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubLimits {
    /// An unanswered request is answered `<type>-error "timed out"` then.
    pub timeout: Duration,
    /// Requests per host waiting for an answer (queued or delivered).
    pub max_count: usize,
    /// Their bytes (id, type and payload as received).
    pub max_bytes: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            timeout: Duration::from_secs(30),
            max_count: 128,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A host message on the hub: serialized once for every subscriber.
#[derive(Debug)]
pub struct HubMessage {
    pub extension_id: String,
    pub json: Box<RawValue>,
}

struct PendingRequest {
    /// The request without its payload (the editors' copy holds that):
    /// what its answer is built from.
    request: Message,
    replier: Replier,
    timer: tokio::task::AbortHandle,
    bytes: usize,
    /// Arrival order, for delivering a queue in order.
    seq: u64,
    /// The message as editors get it.
    message: Arc<HubMessage>,
    /// The attached editors (subscription tokens) it was sent to; empty
    /// while it waits in the queue.
    delivered_to: Vec<u64>,
}

/// Why `host.respond` could not be delivered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RespondError {
    #[error(
        "no pending request {id} from host {extension_id} (already answered, timed out, or never sent)"
    )]
    NoSuchRequest { extension_id: String, id: String },
}

/// What became of an offered request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Sent to the attached editors.
    Delivered,
    /// Waiting for the first editor to attach.
    Queued,
    /// The host's queue is full: answered `-error` at once.
    Refused,
}

#[derive(Default)]
struct Inner {
    /// The filters of the attached editors, by subscription token.
    attached: HashMap<u64, Filter>,
    pending: HashMap<(String, String), PendingRequest>,
    /// Per host: requests waiting and their bytes.
    load: HashMap<String, (usize, usize)>,
}

impl Inner {
    fn take(&mut self, key: &(String, String)) -> Option<PendingRequest> {
        let p = self.pending.remove(key)?;
        if let Some(l) = self.load.get_mut(&key.0) {
            l.0 = l.0.saturating_sub(1);
            l.1 = l.1.saturating_sub(p.bytes);
            if l.0 == 0 {
                self.load.remove(&key.0);
            }
        }
        Some(p)
    }
}

/// See the module documentation.
pub struct MessageHub {
    tx: broadcast::Sender<Arc<HubMessage>>,
    inner: Mutex<Inner>,
    limits: Mutex<HubLimits>,
    next_token: AtomicU64,
    next_seq: AtomicU64,
    me: Weak<MessageHub>,
}

/// Keeps an editor attached; dropping it detaches.
pub struct Attached {
    hub: Arc<MessageHub>,
    token: u64,
}

impl Drop for Attached {
    /// Detach; the requests only this editor had are handed to another
    /// attached editor at once, or go back to their host's queue.
    fn drop(&mut self) {
        let mut inner = self.hub.inner();
        inner.attached.remove(&self.token);
        let Inner {
            attached, pending, ..
        } = &mut *inner;
        let mut resend = Vec::new();
        for ((id, _), p) in pending.iter_mut() {
            if !p.delivered_to.contains(&self.token) {
                continue;
            }
            p.delivered_to.retain(|t| *t != self.token);
            if p.delivered_to.is_empty() {
                p.delivered_to = attached
                    .iter()
                    .filter(|(_, f)| filter_matches(f, id))
                    .map(|(t, _)| *t)
                    .collect();
                if !p.delivered_to.is_empty() {
                    resend.push((p.seq, p.message.clone()));
                }
            }
        }
        resend.sort_by_key(|(seq, _)| *seq);
        for (_, m) in resend {
            let _ = self.hub.tx.send(m);
        }
    }
}

/// What an editor gets when it attaches.
pub struct Attachment {
    pub attached: Attached,
    /// Requests that were waiting for an editor, oldest first.
    pub backlog: Vec<Box<RawValue>>,
    pub rx: broadcast::Receiver<Arc<HubMessage>>,
}

impl MessageHub {
    pub fn new(limits: HubLimits) -> Arc<Self> {
        Arc::new_cyclic(|me| MessageHub {
            tx: broadcast::channel(MESSAGE_QUEUE).0,
            inner: Mutex::new(Inner::default()),
            limits: Mutex::new(limits),
            next_token: AtomicU64::new(1),
            next_seq: AtomicU64::new(1),
            me: me.clone(),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New limits for requests that arrive from now on (a reload).
    pub fn set_limits(&self, limits: HubLimits) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// Attach an editor that wants messages from `filter`'s hosts; it is
    /// handed the requests that were waiting for one.
    pub fn attach(self: &Arc<Self>, filter: Filter) -> Attachment {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner();
        // Under the lock that `offer` broadcasts in: nothing is missed or
        // sent twice between the backlog and the receiver.
        let rx = self.tx.subscribe();
        let mut backlog: Vec<(u64, Box<RawValue>)> = inner
            .pending
            .iter_mut()
            .filter(|((id, _), p)| p.delivered_to.is_empty() && filter_matches(&filter, id))
            .map(|(_, p)| {
                p.delivered_to.push(token);
                (p.seq, p.message.json.clone())
            })
            .collect();
        backlog.sort_by_key(|(seq, _)| *seq);
        inner.attached.insert(token, filter);
        Attachment {
            attached: Attached {
                hub: self.clone(),
                token,
            },
            backlog: backlog.into_iter().map(|(_, j)| j).collect(),
            rx,
        }
    }

    /// Deliver an editor's answer to the host. `Err` when no such request is
    /// pending (answered already, timed out, never sent).
    pub async fn respond(
        &self,
        extension_id: &str,
        id: &RawValue,
        result: Result<Box<RawValue>, String>,
    ) -> Result<(), RespondError> {
        let key = (extension_id.to_string(), id.get().to_string());
        let p = self
            .inner()
            .take(&key)
            .ok_or_else(|| RespondError::NoSuchRequest {
                extension_id: key.0.clone(),
                id: key.1.clone(),
            })?;
        p.timer.abort();
        let reply = match result {
            Ok(payload) => p.request.response(payload),
            Err(e) => p.request.error_reply(&e),
        };
        if let Err(e) = p.replier.send(&reply).await {
            tracing::warn!(extension_id, error = %e, "could not deliver the editor's answer to the host");
        }
        Ok(())
    }

    /// Forget every pending request of a host (its process is gone: there
    /// is nobody left to answer).
    pub fn forget_host(&self, extension_id: &str) {
        let mut inner = self.inner();
        inner.pending.retain(|(id, _), p| {
            let keep = id != extension_id;
            if !keep {
                p.timer.abort();
            }
            keep
        });
        inner.load.remove(extension_id);
    }

    /// Requests waiting for an answer from `extension_id`'s host, and their
    /// bytes.
    pub fn load(&self, extension_id: &str) -> (usize, usize) {
        self.inner()
            .load
            .get(extension_id)
            .copied()
            .unwrap_or_default()
    }

    /// A host-originated request: to the attached editors, or queued for the
    /// first one, or refused when the host's queue is full.
    pub fn offer(&self, extension_id: &str, msg: Message, reply: Replier) -> Offer {
        let limits = *self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = msg.id.get().len() + msg.kind.len() + msg.payload.get().len();
        let mut inner = self.inner();
        let (count, used) = inner.load.get(extension_id).copied().unwrap_or_default();
        let key = (extension_id.to_string(), msg.id_key().to_string());
        if count >= limits.max_count
            || used.saturating_add(bytes) > limits.max_bytes
            || inner.pending.contains_key(&key)
        {
            drop(inner);
            let why = if count >= limits.max_count || used.saturating_add(bytes) > limits.max_bytes
            {
                format!(
                    "too many requests waiting for an editor ({count} requests, {used} bytes; limits {} and {})",
                    limits.max_count, limits.max_bytes
                )
            } else {
                format!("request id {} is already waiting", msg.id_key())
            };
            tracing::warn!(extension_id, kind = %msg.kind, %why, "host request refused");
            let err = msg.error_reply(&why);
            tokio::spawn(async move {
                let _ = reply.send(&err).await;
            });
            return Offer::Refused;
        }
        let json = serde_json::value::to_raw_value(&HostMessage {
            extension_id,
            id: &msg.id,
            kind: &msg.kind,
            payload: &msg.payload,
        })
        .expect("messages serialize");
        let hub_msg = Arc::new(HubMessage {
            extension_id: extension_id.to_string(),
            json,
        });
        let me = self.me.clone();
        let timer_key = key.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(limits.timeout).await;
            let Some(hub) = me.upgrade() else { return };
            let p = hub.inner().take(&timer_key);
            if let Some(p) = p {
                let _ = p.replier.send(&p.request.error_reply("timed out")).await;
            }
        })
        .abort_handle();
        let listening: Vec<u64> = inner
            .attached
            .iter()
            .filter(|(_, f)| filter_matches(f, extension_id))
            .map(|(t, _)| *t)
            .collect();
        let delivered = !listening.is_empty();
        let l = inner.load.entry(extension_id.to_string()).or_default();
        l.0 += 1;
        l.1 += bytes;
        inner.pending.insert(
            key,
            PendingRequest {
                request: Message {
                    payload: RawValue::from_string("null".into()).expect("JSON"),
                    ..msg
                },
                replier: reply,
                timer,
                bytes,
                seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
                message: hub_msg.clone(),
                delivered_to: listening,
            },
        );
        if delivered {
            let _ = self.tx.send(hub_msg);
            Offer::Delivered
        } else {
            Offer::Queued
        }
    }
}

/// Turn a list of ids into a filter.
pub fn filter_of(ids: Option<Vec<String>>) -> Filter {
    ids.map(|v| v.into_iter().collect::<HashSet<_>>())
}
