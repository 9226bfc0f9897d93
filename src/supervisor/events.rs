//! The event bus: one daemon-wide sequence of state events, the latest status
//! of every host, and lossless-or-told fan-out to subscribers.
//!
//! Publishing takes one short lock that assigns `seq`, updates the host's
//! status and broadcasts, so every subscriber sees the same events in `seq`
//! order, and a new subscriber's snapshot is exactly the state as of the `seq`
//! it starts after.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::value::RawValue;
use tokio::sync::broadcast;

use crate::protocol::{EventKind, HostState, HostStatus, StateEvent};

/// How many events a subscriber may fall behind before it is told it lagged.
pub const SUBSCRIBER_QUEUE: usize = 1024;

/// A host's status with what its wire copy cannot carry: the instant its
/// current process started, from which `uptimeMs` is computed whenever the
/// status is read.
#[derive(Debug, Clone)]
pub struct LiveStatus {
    pub status: HostStatus,
    pub started: Option<Instant>,
}

impl LiveStatus {
    /// The status with `uptime_ms` computed for now.
    pub fn now(&self) -> HostStatus {
        let mut s = self.status.clone();
        s.uptime_ms = self.started.map(|t| crate::time::millis(t.elapsed()));
        s
    }
}

/// An event about one host, `seq` to be assigned.
fn about(kind: EventKind, seq: u64, status: HostStatus, reason: String) -> StateEvent {
    StateEvent {
        kind,
        seq,
        extension_id: Some(status.extension_id.clone()),
        from: None,
        to: Some(status.state),
        generation: Some(status.generation),
        pid: status.pid,
        reason,
        at: crate::time::rfc3339_now(),
        status: Some(status),
        missed: None,
    }
}

/// The event that ends a subscription that fell `missed` events behind.
pub fn lagged(seq: u64, missed: u64) -> StateEvent {
    StateEvent::lagged(seq, missed, crate::time::rfc3339_now())
}

/// An event on the bus: serialized once, shared by every subscriber.
#[derive(Debug)]
pub struct BusEvent {
    pub seq: u64,
    pub extension_id: String,
    pub json: Box<RawValue>,
    /// For in-process waiters: why a running host was judged failed, when
    /// this transition says so (the wire has only the reason's text).
    pub failure: Option<Failure>,
}

/// Why the daemon judged a running host failed (`running → unhealthy`,
/// then SIGKILL). Its text is the transition's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Its ready timeout passed before the handshake completed.
    NotReady { ms: u64 },
    /// It closed its IPC channel but kept running.
    ChannelClosed,
    /// Its IPC session judged it (a malformed frame, no heartbeat reply):
    /// the session's words.
    Session(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotReady { ms } => write!(f, "not ready within {ms} ms"),
            Failure::ChannelClosed => f.write_str("closed its IPC channel but kept running"),
            Failure::Session(reason) => f.write_str(reason),
        }
    }
}

/// Which hosts a subscriber wants; `None` means all.
pub type Filter = Option<HashSet<String>>;

pub fn filter_matches(filter: &Filter, extension_id: &str) -> bool {
    filter.as_ref().is_none_or(|f| f.contains(extension_id))
}

struct Inner {
    seq: u64,
    statuses: BTreeMap<String, LiveStatus>,
}

/// See the module documentation.
pub struct EventBus {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<BusEvent>>,
}

/// What a new subscriber starts from.
pub struct Subscription {
    /// One snapshot event per matching host, as of `seq`.
    pub snapshot: Vec<StateEvent>,
    /// Every event after `seq`.
    pub events: broadcast::Receiver<Arc<BusEvent>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(SUBSCRIBER_QUEUE);
        EventBus {
            inner: Mutex::new(Inner {
                seq: 0,
                statuses: BTreeMap::new(),
            }),
            tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a state change and send it to every subscriber. Returns its seq.
    pub fn transition(
        &self,
        from: HostState,
        status: LiveStatus,
        reason: impl Into<String>,
    ) -> u64 {
        self.transition_failed(from, status, reason, None)
    }

    /// A state change that judges the host failed: `failure` goes with the
    /// event to in-process waiters.
    pub fn transition_failed(
        &self,
        from: HostState,
        status: LiveStatus,
        reason: impl Into<String>,
        failure: Option<Failure>,
    ) -> u64 {
        let mut event = about(EventKind::Transition, 0, status.now(), reason.into());
        event.from = Some(from);
        self.publish(event, status.started, true, failure)
    }

    /// Record that a host became ready.
    pub fn ready(&self, status: LiveStatus) -> u64 {
        let mut event = about(EventKind::Ready, 0, status.now(), "ready".into());
        event.from = event.to;
        self.publish(event, status.started, true, None)
    }

    /// Record that a host was removed.
    pub fn removed(&self, status: LiveStatus) -> u64 {
        let event = about(EventKind::Removed, 0, status.now(), "removed".into());
        self.publish(event, status.started, false, None)
    }

    fn publish(
        &self,
        mut event: StateEvent,
        started: Option<Instant>,
        keep: bool,
        failure: Option<Failure>,
    ) -> u64 {
        let mut inner = self.lock();
        inner.seq += 1;
        event.seq = inner.seq;
        let status = event.status.clone().expect("host events carry a status");
        let id = status.extension_id.clone();
        if keep {
            inner
                .statuses
                .insert(id.clone(), LiveStatus { status, started });
        } else {
            inner.statuses.remove(&id);
        }
        let json = serde_json::value::to_raw_value(&event).expect("events serialize");
        // No receivers is fine: nobody is subscribed.
        let _ = self.tx.send(Arc::new(BusEvent {
            seq: event.seq,
            extension_id: id,
            json,
            failure,
        }));
        event.seq
    }

    /// Update a host's status without an event (budget reset, registration).
    pub fn set_status(&self, status: LiveStatus) {
        let mut inner = self.lock();
        inner
            .statuses
            .insert(status.status.extension_id.clone(), status);
    }

    pub fn status(&self, extension_id: &str) -> Option<HostStatus> {
        self.lock().statuses.get(extension_id).map(LiveStatus::now)
    }

    /// Every host, sorted by extension id.
    pub fn list(&self) -> Vec<HostStatus> {
        self.lock().statuses.values().map(LiveStatus::now).collect()
    }

    /// The last seq assigned.
    pub fn seq(&self) -> u64 {
        self.lock().seq
    }

    /// Start a subscription: a snapshot and a receiver, taken atomically.
    pub fn subscribe(&self, filter: &Filter) -> Subscription {
        let inner = self.lock();
        let events = self.tx.subscribe();
        let snapshot = inner
            .statuses
            .values()
            .filter(|s| filter_matches(filter, &s.status.extension_id))
            .map(|s| about(EventKind::Snapshot, inner.seq, s.now(), "snapshot".into()))
            .collect();
        Subscription { snapshot, events }
    }
}
