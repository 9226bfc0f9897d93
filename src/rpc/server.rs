//! Accepting control connections: peer check, connection limit, one task per
//! connection, and a backoff when `accept` itself fails (out of descriptors).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::traits::tokio::Listener as _;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::connection::MethodTable;
use super::transport::{self, Limits};
use crate::supervisor::peers::Verdict;

/// Server settings.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub per_connection: Limits,
}

/// Judges a peer's pid: is it one of the hosts' processes? (The daemon
/// passes the supervisor's `host_peers().judge`.)
pub type HostCheck = Arc<dyn Fn(i32) -> Verdict + Send + Sync>;

/// Whether the peer may use the control socket: its uid is the daemon's or
/// root's, and it is no process of any host (see `supervisor::peers`).
#[cfg(unix)]
fn check_peer(stream: &Stream, hosts: &HostCheck, refusals: &mut Refusals) -> bool {
    use interprocess::local_socket::traits::StreamCommon as _;
    let me = crate::paths::current_uid();
    let creds = match stream.peer_creds() {
        Ok(creds) => creds,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read peer credentials; refusing the connection");
            return false;
        }
    };
    match creds.euid() {
        Some(uid) if crate::paths::peer_allowed(uid, me) => {}
        other => {
            tracing::warn!(peer_uid = ?other, pid = ?creds.pid(), "refused a connection from another user");
            return false;
        }
    }
    let Some(pid) = creds.pid() else {
        // Every Unix this runs on reports the pid; without it the host
        // check cannot be made, and failing closed is the rule.
        tracing::warn!("peer pid unknown; refusing the connection");
        return false;
    };
    // The check reads /proc one file at a time: the spare descriptor makes
    // room for it even when every other one is in use.
    refusals.spare.take();
    let verdict = hosts(pid);
    refusals.spare = std::fs::File::open("/dev/null").ok();
    match verdict {
        Verdict::Outsider => true,
        verdict => {
            refusals.note(pid, &verdict);
            false
        }
    }
}

#[cfg(not(unix))]
fn check_peer(_stream: &Stream, _hosts: &HostCheck, _refusals: &mut Refusals) -> bool {
    // Named pipes are created with a default DACL for the current user.
    true
}

type Live = Arc<std::sync::Mutex<std::collections::HashMap<usize, Arc<transport::Presence>>>>;

/// A connection slot: a free one, or, when all are taken, the slot of the
/// connection idle longest (no request in flight, no subscription, quiet for
/// a moment), which is closed for it. A client holding many stalled
/// connections cannot lock others out; one with subscriptions or work is
/// never closed. Tries for a second, then gives up (`None`).
async fn make_room(
    slots: &Arc<Semaphore>,
    live: &Live,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        if let Ok(p) = slots.clone().try_acquire_owned() {
            return Some(p);
        }
        let oldest = live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|p| p.idle_since().map(|t| (t, p.clone())))
            .min_by_key(|(t, _)| *t);
        let next_look = tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        if let Some((_, p)) = oldest {
            p.evict();
            // Its slot, once its task has ended.
            if let Ok(Ok(permit)) =
                tokio::time::timeout_at(deadline, slots.clone().acquire_owned()).await
            {
                return Some(permit);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep_until(next_look.min(deadline)).await;
    }
}

/// Logs refused host connections: the first of a burst at once, then at
/// most one line a second with how many were refused meanwhile (a host
/// that loops on connect must not flood the log).
#[derive(Default)]
#[cfg_attr(not(unix), allow(dead_code))]
struct Refusals {
    last: Option<std::time::Instant>,
    suppressed: u64,
    /// A descriptor held in reserve for the peer check (see `check_peer`).
    spare: Option<std::fs::File>,
}

#[cfg_attr(not(unix), allow(dead_code))]
impl Refusals {
    fn note(&mut self, pid: i32, verdict: &Verdict) {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        match verdict {
            Verdict::Host(id) => tracing::warn!(
                extension_id = id.as_deref().unwrap_or("(in a host cgroup)"),
                peer_pid = pid,
                suppressed = self.suppressed,
                "refused a control connection from a host's process"
            ),
            Verdict::Unknown(why) => tracing::warn!(
                peer_pid = pid,
                suppressed = self.suppressed,
                %why,
                "refused a control connection: cannot tell whether the peer is a host's process"
            ),
            Verdict::Outsider => {}
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Accept connections until `shutdown` turns true, then wait (briefly) for the
/// open connections to flush and close.
pub async fn run(
    listener: Listener,
    methods: MethodTable,
    limits: ServerLimits,
    hosts: HostCheck,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut refusals = Refusals {
        spare: std::fs::File::open("/dev/null").ok(),
        ..Refusals::default()
    };
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let next_id = AtomicUsize::new(1);
    let mut conns = JoinSet::new();
    // Every served connection's presence, to find an idle one to close when
    // the slots are full.
    let live: Live = Arc::default();
    let mut backoff = AcceptBackoff::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let mut stream = match accepted {
            Ok(s) => {
                backoff.succeeded();
                s
            }
            Err(e) => {
                // The listener stays readable while the pending connection
                // cannot be taken (EMFILE, ENFILE, ENOBUFS): retrying at
                // once would spin. Wait, still answering shutdown.
                let pause = backoff.failed(&e);
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
                continue;
            }
        };
        if !check_peer(&stream, &hosts, &mut refusals) {
            continue; // closed without a reply
        }
        let conn_id = next_id.fetch_add(1, Ordering::Relaxed);
        let methods = methods.clone();
        let sd = shutdown.clone();
        let presence = Arc::new(transport::Presence::default());
        let slots = slots.clone();
        let max = limits.max_connections;
        let live = live.clone();
        conns.spawn(async move {
            let Some(permit) = make_room(&slots, &live).await else {
                tracing::warn!(max, "connection refused: too many connections, none idle");
                let _ = stream
                    .write_all(transport::too_many_connections_line().as_bytes())
                    .await;
                let _ = stream.shutdown().await;
                return;
            };
            live.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(conn_id, presence.clone());
            transport::serve(
                stream,
                methods,
                conn_id,
                limits.per_connection,
                presence,
                sd,
            )
            .await;
            live.lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&conn_id);
            drop(permit);
        });
    }
    let drain = async { while conns.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
}

/// The pause after a failed `accept`: 10 ms, doubling to 1 s, back to 10 ms
/// after a success. At most one warning per [`AcceptBackoff::WARN_EVERY`],
/// with the count of the failures not logged since.
struct AcceptBackoff {
    pause: Duration,
    failures: u64,
    suppressed: u64,
    last_warning: Option<Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);
    const WARN_EVERY: Duration = Duration::from_secs(10);

    fn new() -> Self {
        AcceptBackoff {
            pause: Self::FIRST,
            failures: 0,
            suppressed: 0,
            last_warning: None,
        }
    }

    /// Count a failure; how long to wait before the next `accept`.
    fn failed(&mut self, error: &std::io::Error) -> Duration {
        self.failed_at(error, Instant::now())
    }

    fn failed_at(&mut self, error: &std::io::Error, now: Instant) -> Duration {
        let pause = self.pause;
        self.pause = (self.pause * 2).min(Self::MAX);
        self.failures += 1;
        if self
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= Self::WARN_EVERY)
        {
            tracing::warn!(
                error = %error,
                suppressed = self.suppressed,
                retry_in_ms = pause.as_millis() as u64,
                "accept failed (out of descriptors? see README: open-files limit); \
                 backing off, at most one such warning per 10 s"
            );
            self.last_warning = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        pause
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                failures = self.failures,
                "accept works again after failures"
            );
        }
        self.pause = Self::FIRST;
        self.failures = 0;
        self.suppressed = 0;
        self.last_warning = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_a_second_and_resets() {
        let mut b = AcceptBackoff::new();
        let e = std::io::Error::from_raw_os_error(24);
        let t0 = Instant::now();
        let pauses: Vec<u128> = (0..9)
            .map(|i| b.failed_at(&e, t0 + Duration::from_millis(i)).as_millis())
            .collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        // One warning, eight failures suppressed since.
        assert_eq!(b.suppressed, 8);
        b.failed_at(&e, t0 + AcceptBackoff::WARN_EVERY);
        assert_eq!(b.suppressed, 0, "a warning once the interval passed");
        b.succeeded();
        assert_eq!(b.failed_at(&e, t0).as_millis(), 10);
    }
}
