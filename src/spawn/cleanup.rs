//! What a host process leaves behind once it is gone (its cgroup
//! directories), removed off every reply path: `host.stop` answers, and a
//! crashed host respawns, as soon as the processes are gone; the removal
//! follows here.
//!
//! One task per supervisor takes what is released through a bounded queue
//! ([`Cleanup::release`] never waits: when the queue is full the remains are
//! left, with a warning, for the shutdown sweep). It coalesces: everything
//! queued while a batch runs goes into the next one, and a batch is one
//! trip to a blocking thread (`rmdir` is a syscall; nothing here runs on the
//! runtime's threads). What is still populated (a SIGKILL just sent takes a
//! moment to land) is retried every [`RETRY`] and left in place, with a
//! warning, after [`GRACE`]. Nothing is ever reused: each process gets
//! fresh cgroup names, so a later start of the same id never waits for
//! this.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Cgroups;

/// Items queued or in progress at most (each direction of the bound).
const CAPACITY: usize = 1024;
/// How often what is still populated is tried again.
pub const RETRY: Duration = Duration::from_millis(10);
/// How long remains may stay populated before they are left in place.
pub const GRACE: Duration = Duration::from_secs(5);

/// What one released process left, as the clean-up task sees it.
pub trait Remains: Send + 'static {
    /// Remove what can be removed now (a blocking call: it runs on a
    /// blocking thread); `true` once nothing is left.
    fn try_remove(&mut self) -> bool;
    /// Named in the warning when it is left in place.
    fn describe(&self) -> String;
}

/// What the clean-up task has done, for tests and logs.
#[derive(Debug, Default)]
pub struct CleanupStats {
    /// Trips to a blocking thread.
    pub batches: AtomicU64,
    /// Items fully removed.
    pub removed: AtomicU64,
    /// Items left in place (still populated after the grace, or refused
    /// because the queue was full).
    pub left: AtomicU64,
}

/// The handle to the clean-up task (cheap to clone).
pub struct Cleanup<T: Remains = Cgroups> {
    tx: mpsc::Sender<T>,
    stats: Arc<CleanupStats>,
}

impl<T: Remains> Clone for Cleanup<T> {
    fn clone(&self) -> Self {
        Cleanup {
            tx: self.tx.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<T: Remains> Cleanup<T> {
    /// Start the task on the current runtime; it ends when every handle is
    /// gone and what it holds is removed or given up on.
    pub fn start() -> Self {
        Self::with_capacity(CAPACITY)
    }

    /// As [`Cleanup::start`], holding at most `capacity` items queued and
    /// as many in progress.
    pub fn with_capacity(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        let stats = Arc::new(CleanupStats::default());
        tokio::spawn(run(rx, stats.clone(), capacity));
        Cleanup { tx, stats }
    }

    /// Hand `remains` to the task; never waits. `false` when the queue is
    /// full (or the task is gone): they are left in place, with a warning.
    pub fn release(&self, remains: T) -> bool {
        match self.tx.try_send(remains) {
            Ok(()) => true,
            Err(e) => {
                let remains = match e {
                    mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
                };
                tracing::warn!(what = %remains.describe(), "clean-up queue full; left in place for the shutdown sweep");
                self.stats.left.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn stats(&self) -> &CleanupStats {
        &self.stats
    }
}

async fn run<T: Remains>(mut rx: mpsc::Receiver<T>, stats: Arc<CleanupStats>, capacity: usize) {
    let mut pending: Vec<(T, Instant)> = Vec::new();
    let mut incoming = Vec::new();
    let mut open = true;
    loop {
        let room = capacity.saturating_sub(pending.len());
        if pending.is_empty() {
            if !open || rx.recv_many(&mut incoming, room).await == 0 {
                return;
            }
        } else if open && room > 0 {
            // More work, or the retry tick, whichever comes first.
            tokio::select! {
                n = rx.recv_many(&mut incoming, room) => open = n > 0,
                () = tokio::time::sleep(RETRY) => {}
            }
        } else {
            tokio::time::sleep(RETRY).await;
        }
        let now = Instant::now();
        pending.extend(incoming.drain(..).map(|r| (r, now + GRACE)));
        let batch = std::mem::take(&mut pending);
        let stats_b = stats.clone();
        let kept = tokio::task::spawn_blocking(move || {
            stats_b.batches.fetch_add(1, Ordering::Relaxed);
            let mut kept = Vec::new();
            for (mut r, give_up_at) in batch {
                if r.try_remove() {
                    stats_b.removed.fetch_add(1, Ordering::Relaxed);
                } else if now >= give_up_at {
                    tracing::warn!(what = %r.describe(), "still populated; left in place");
                    stats_b.left.fetch_add(1, Ordering::Relaxed);
                } else {
                    kept.push((r, give_up_at));
                }
            }
            kept
        })
        .await;
        match kept {
            Ok(kept) => pending = kept,
            Err(e) => {
                // A panic in a removal: what that batch held is dropped.
                tracing::error!(error = %e, "clean-up batch failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// Remains that empty when told to, counting removal attempts.
    struct Fake {
        populated: Arc<AtomicBool>,
        tries: Arc<AtomicU64>,
    }

    impl Remains for Fake {
        fn try_remove(&mut self) -> bool {
            self.tries.fetch_add(1, Ordering::Relaxed);
            !self.populated.load(Ordering::Relaxed)
        }
        fn describe(&self) -> String {
            "fake".into()
        }
    }

    fn fake(populated: bool) -> (Fake, Arc<AtomicBool>, Arc<AtomicU64>) {
        let p = Arc::new(AtomicBool::new(populated));
        let t = Arc::new(AtomicU64::new(0));
        (
            Fake {
                populated: p.clone(),
                tries: t.clone(),
            },
            p,
            t,
        )
    }

    /// Let the task run until it waits for time or work.
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_micros(1)).await;
        }
    }

    /// A hundred releases made at once are one batch, one blocking trip.
    #[tokio::test(start_paused = true)]
    async fn releases_made_together_are_one_batch() {
        let c = Cleanup::<Fake>::start();
        for _ in 0..100 {
            assert!(c.release(fake(false).0));
        }
        settle().await;
        assert_eq!(c.stats().removed.load(Ordering::Relaxed), 100);
        assert_eq!(c.stats().batches.load(Ordering::Relaxed), 1);
        assert_eq!(c.stats().left.load(Ordering::Relaxed), 0);
    }

    /// What is still populated is retried every tick until it empties, and
    /// left in place after the grace; neither holds up the others.
    #[tokio::test(start_paused = true)]
    async fn populated_remains_are_retried_then_left() {
        let c = Cleanup::<Fake>::start();
        let (slow, slow_populated, slow_tries) = fake(true);
        let (stuck, _stuck_populated, stuck_tries) = fake(true);
        c.release(slow);
        c.release(stuck);
        c.release(fake(false).0);
        settle().await;
        assert_eq!(c.stats().removed.load(Ordering::Relaxed), 1);
        tokio::time::sleep(RETRY * 3).await;
        settle().await;
        let tried = slow_tries.load(Ordering::Relaxed);
        assert!(tried >= 3, "retried {tried} times in three ticks");
        slow_populated.store(false, Ordering::Relaxed);
        tokio::time::sleep(RETRY * 2).await;
        settle().await;
        assert_eq!(c.stats().removed.load(Ordering::Relaxed), 2);
        assert_eq!(c.stats().left.load(Ordering::Relaxed), 0);
        tokio::time::sleep(GRACE).await;
        settle().await;
        assert_eq!(c.stats().left.load(Ordering::Relaxed), 1);
        let tries = stuck_tries.load(Ordering::Relaxed);
        tokio::time::sleep(RETRY * 10).await;
        settle().await;
        assert_eq!(
            stuck_tries.load(Ordering::Relaxed),
            tries,
            "tried again after it was left"
        );
    }

    /// The queue is bounded: past its capacity a release is refused at
    /// once (counted as left), never waited for.
    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_at_once() {
        let c = Cleanup::<Fake>::with_capacity(4);
        // The task has not run yet: the queue holds four.
        let accepted = (0..6).filter(|_| c.release(fake(true).0)).count();
        assert_eq!(accepted, 4);
        assert_eq!(c.stats().left.load(Ordering::Relaxed), 2);
        // In progress is bounded too: four held, four more queue.
        settle().await;
        let accepted = (0..6).filter(|_| c.release(fake(true).0)).count();
        assert_eq!(accepted, 4);
        assert_eq!(c.stats().left.load(Ordering::Relaxed), 4);
    }
}
