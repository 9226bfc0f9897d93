//! One connection as methods see it, and what each method may take from it.
//!
//! [`Connection`] is reached by methods through the call's `Extensions`: it
//! holds the connection's outgoing queue and its subscriptions.
//! [`MethodTable`] is the method set a connection serves with the [`Access`]
//! each method declared when it was registered, so the transport gives a
//! call its connection (or refuses it in a batch) without knowing any
//! method's name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use jsonrpsee::Methods;
use jsonrpsee_types::Id;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

/// Subscriptions one connection may hold.
const MAX_SUBSCRIPTIONS: usize = 1024;

/// Subscription ids are unique daemon-wide.
static NEXT_SUBSCRIPTION: AtomicU64 = AtomicU64::new(1);

/// One connection: its outgoing queue and its subscriptions.
pub struct Connection {
    out: mpsc::Sender<Box<RawValue>>,
    subscriptions: Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

/// The JSON-RPC id of the call being served (given to calls whose
/// [`Access`] is [`Access::ConnectionAndCallId`]).
#[derive(Debug, Clone)]
pub struct CallId(pub Id<'static>);

impl Connection {
    pub(crate) fn new(out: mpsc::Sender<Box<RawValue>>) -> Self {
        Connection {
            out,
            subscriptions: Mutex::new(HashMap::new()),
        }
    }

    /// Queue a message; fails once the connection is gone.
    pub async fn send(&self, msg: Box<RawValue>) -> Result<(), ()> {
        self.out.send(msg).await.map_err(|_| ())
    }

    /// Queue a message if there is room now; `false` if it was dropped
    /// (the queue is full or the connection gone).
    pub fn try_send(&self, msg: Box<RawValue>) -> bool {
        self.out.try_send(msg).is_ok()
    }

    /// Resolves when the connection's writer has gone away.
    pub async fn closed(&self) {
        self.out.closed().await
    }

    fn subs(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<()>>> {
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a new subscription: its id and the receiver that fires when it
    /// is cancelled. `None` when the connection has too many.
    pub fn add_subscription(&self) -> Option<(u64, oneshot::Receiver<()>)> {
        let mut subs = self.subs();
        if subs.len() >= MAX_SUBSCRIPTIONS {
            return None;
        }
        let id = NEXT_SUBSCRIPTION.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        subs.insert(id, tx);
        Some((id, rx))
    }

    pub(crate) fn subscription_count(&self) -> usize {
        self.subs().len()
    }

    /// Cancel a subscription; whether it was active.
    pub fn cancel_subscription(&self, id: u64) -> bool {
        self.subs().remove(&id).map(|tx| tx.send(())).is_some()
    }

    pub fn remove_subscription(&self, id: u64) {
        self.subs().remove(&id);
    }

    /// End every subscription (the client closed its side).
    pub(crate) fn cancel_all(&self) {
        for (_, tx) in self.subs().drain() {
            let _ = tx.send(());
        }
    }
}

/// What a method takes from the connection that calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    /// Nothing: a plain call (no allocation for the connection either).
    #[default]
    Nothing,
    /// Opens a subscription on the connection: refused inside a batch, and
    /// ignored as a notification (nobody would learn its id).
    Subscribe,
    /// The connection ([`Connection`] in the call's `Extensions`).
    Connection,
    /// The connection and the call's own id ([`CallId`]), for notifications
    /// about this call.
    ConnectionAndCallId,
}

/// The methods a connection serves, with what each takes from it.
#[derive(Clone)]
pub struct MethodTable {
    methods: Methods,
    access: Arc<HashMap<&'static str, Access>>,
}

impl MethodTable {
    /// `methods`, where every method not named in `access` takes nothing.
    pub fn new(
        methods: impl Into<Methods>,
        access: impl IntoIterator<Item = (&'static str, Access)>,
    ) -> Self {
        MethodTable {
            methods: methods.into(),
            access: Arc::new(access.into_iter().collect()),
        }
    }

    pub fn methods(&self) -> &Methods {
        &self.methods
    }

    /// What `method` takes from its connection.
    pub fn access(&self, method: &str) -> Access {
        self.access.get(method).copied().unwrap_or_default()
    }
}
