//! [`Counters`]: what a host's channels have seen, over all its processes.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::IpcCounts;

/// What a host's channels have seen, over all its processes (`host.usage`).
#[derive(Debug, Default)]
pub struct Counters {
    pub(super) oversize_frames: AtomicU64,
    pub(super) host_requests: AtomicU64,
    pub(super) host_requests_refused: AtomicU64,
    pub(super) partials_dropped: AtomicU64,
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
