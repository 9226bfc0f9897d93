//! Host-originated requests: fanned out to the editors that subscribed, and
//! answered by the first of them to respond — or by the daemon itself with
//! `<type>-error` when no editor is attached or none answers in time.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::broadcast;

use super::events::{Filter, filter_matches};
use crate::ipc::{HostRequests, Message, Replier};

/// How long a host-originated request waits for an editor's answer.
pub const EDITOR_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages a subscriber may fall behind before it is told it lagged.
const MESSAGE_QUEUE: usize = 1024;

/// One `host.message` notification's result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostMessage<'a> {
    pub extension_id: &'a str,
    pub id: &'a RawValue,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub payload: &'a RawValue,
}

/// A host message on the hub: serialized once for every subscriber.
#[derive(Debug)]
pub struct HubMessage {
    pub extension_id: String,
    pub json: Box<RawValue>,
}

struct PendingRequest {
    request: Message,
    replier: Replier,
    timer: tokio::task::AbortHandle,
}

/// Why `host.respond` could not be delivered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RespondError {
    #[error(
        "no pending request {id} from host {extension_id} (already answered, timed out, or never sent)"
    )]
    NoSuchRequest { extension_id: String, id: String },
}

/// See the module documentation.
pub struct MessageHub {
    tx: broadcast::Sender<Arc<HubMessage>>,
    /// The filters of the attached editors, by subscription token.
    attached: Mutex<HashMap<u64, Filter>>,
    next_token: AtomicU64,
    pending: Mutex<HashMap<(String, String), PendingRequest>>,
    me: Weak<MessageHub>,
}

/// Keeps an editor attached; dropping it detaches.
pub struct Attached {
    hub: Arc<MessageHub>,
    token: u64,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.hub
            .attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.token);
    }
}

impl MessageHub {
    pub fn new() -> Arc<Self> {
        Arc::new_cyclic(|me| MessageHub {
            tx: broadcast::channel(MESSAGE_QUEUE).0,
            attached: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            me: me.clone(),
        })
    }

    /// Attach an editor that wants messages from `filter`'s hosts.
    pub fn attach(
        self: &Arc<Self>,
        filter: Filter,
    ) -> (Attached, broadcast::Receiver<Arc<HubMessage>>) {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let rx = self.tx.subscribe();
        self.attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, filter);
        (
            Attached {
                hub: self.clone(),
                token,
            },
            rx,
        )
    }

    fn anyone_listening(&self, extension_id: &str) -> bool {
        self.attached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|f| filter_matches(f, extension_id))
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
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key)
            .ok_or_else(|| RespondError::NoSuchRequest {
                extension_id: key.0.clone(),
                id: key.1.clone(),
            })?;
        p.timer.abort();
        let reply = match result {
            Ok(payload) => Message {
                id: p.request.id.clone(),
                kind: format!("{}-response", p.request.kind),
                payload,
            },
            Err(e) => p.request.error_reply(&e),
        };
        if let Err(e) = p.replier.send(&reply).await {
            tracing::warn!(extension_id, error = %e, "could not deliver the editor's answer to the host");
        }
        Ok(())
    }

    /// Forget every pending request of a host (it exited).
    pub fn forget_host(&self, extension_id: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _), p| {
                let keep = id != extension_id;
                if !keep {
                    p.timer.abort();
                }
                keep
            });
    }
}

impl HostRequests for MessageHub {
    fn on_request(&self, extension_id: &str, msg: Message, reply: Replier) {
        if !self.anyone_listening(extension_id) {
            let err = msg.error_reply("no editor attached");
            tokio::spawn(async move {
                let _ = reply.send(&err).await;
            });
            return;
        }
        let json = serde_json::value::to_raw_value(&HostMessage {
            extension_id,
            id: &msg.id,
            kind: &msg.kind,
            payload: &msg.payload,
        })
        .expect("messages serialize");
        let key = (extension_id.to_string(), msg.id_key().to_string());
        let me = self.me.clone();
        let timer_key = key.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(EDITOR_REPLY_TIMEOUT).await;
            let Some(hub) = me.upgrade() else { return };
            let p = hub
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&timer_key);
            if let Some(p) = p {
                let _ = p.replier.send(&p.request.error_reply("timed out")).await;
            }
        })
        .abort_handle();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                key,
                PendingRequest {
                    request: msg,
                    replier: reply,
                    timer,
                },
            );
        let _ = self.tx.send(Arc::new(HubMessage {
            extension_id: extension_id.to_string(),
            json,
        }));
    }
}

/// Turn a list of ids into a filter.
pub fn filter_of(ids: Option<Vec<String>>) -> Filter {
    ids.map(|v| v.into_iter().collect::<HashSet<_>>())
}
