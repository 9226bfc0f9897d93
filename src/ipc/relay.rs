//! Relaying to a host: [`SessionHandle`] sends requests (waiting for their
//! `-response`) and one-way messages; a [`Replier`] answers a host's own
//! request; the [`Forget`] guard keeps the pending table to the requests
//! somebody still waits for.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::shared::{Conn, PendingRelay, Shared};
use super::{Message, PartialSink, RelayError};

/// Answers one host-originated request on the connection it came from.
#[derive(Clone)]
pub struct Replier {
    pub(super) conn: Arc<Conn>,
}

impl Replier {
    pub async fn send(&self, msg: &Message) -> Result<(), RelayError> {
        self.conn.send(msg).await
    }
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

/// A cheap handle to relay requests to one host process.
#[derive(Clone)]
pub struct SessionHandle {
    pub(super) shared: Arc<Shared>,
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
