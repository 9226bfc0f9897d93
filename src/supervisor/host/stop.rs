//! The stop path: SIGTERM to the group, SIGKILL at the stop timeout, then
//! wait until nothing is left (the cgroup2 cgroup's emptying is the event
//! where there is one; the group is polled otherwise), and `stopped`: the
//! reply goes then. Removing the cgroups follows, on the clean-up task
//! (`spawn::cleanup`), and `running.json`'s rewrite on its writer task;
//! neither is waited for.
//!
//! The SIGTERM is the first thing a stop does, and the actor then yields
//! once: the other actors a batch of stops has woken send theirs before
//! any of them does its bookkeeping.
//!
//! Processes that outlive SIGKILL by [`KILL_GRACE`] (a process stuck in the
//! kernel, one the daemon may not signal) do not hold the stop: it ends
//! `stopped` with their pids in `leftoverPids` and a warning, and they stay
//! in the status, checked every second, until they are gone.

use std::time::Duration;

use tokio::time::Instant;

use super::actor::HostActor;
use super::handle::Reply;
use crate::protocol::HostStatus;
use crate::spawn::{Cleanup, Containment, Emptied, ExitOutcome};
use crate::state::{HostState, Input};

/// How often a stopping host's process group is checked once its leader is
/// gone. There is no event for "the last grandchild died" without cgroups.
const GROUP_POLL: Duration = Duration::from_millis(5);
/// With cgroup events, the poll is only a safety net.
const GROUP_POLL_BACKUP: Duration = Duration::from_millis(250);
/// How long after SIGKILL a group may take to empty before the stop ends
/// without waiting for it (reporting what is left).
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often leftovers are checked for being gone.
const LEFTOVER_POLL: Duration = Duration::from_secs(1);

/// A stop in progress.
pub(super) struct Stopping {
    /// SIGKILL the group at this time (cleared once sent).
    kill_at: Option<Instant>,
    /// Give up waiting for the group at this time (set when SIGKILL is sent).
    give_up_at: Option<Instant>,
    /// Check whether the group is empty at this time.
    pub(super) poll_at: Option<Instant>,
    /// With a cgroup2 cgroup: resolves when it empties (inotify on
    /// `cgroup.events`), so the poll above is only a safety net.
    emptied: Option<Emptied>,
    /// inotify failed once: poll for the rest of this stop.
    no_events: bool,
    pub(super) waiters: Vec<Reply<HostStatus>>,
    /// `host.restart` calls to answer by starting again once stopped.
    pub(super) restarts: Vec<Reply<HostStatus>>,
}

impl Stopping {
    /// The earliest of its deadlines.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [self.kill_at, self.give_up_at, self.poll_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Resolves when the stopping host's cgroup empties; never without one.
    pub(super) async fn emptied(stop: &mut Option<Stopping>) -> std::io::Result<()> {
        match stop.as_mut().and_then(|s| s.emptied.as_mut()) {
            Some(f) => f.await,
            None => std::future::pending().await,
        }
    }
}

/// Processes of earlier stops that outlived SIGKILL, held until they are gone.
#[derive(Default)]
pub(super) struct Leftovers {
    held: Vec<Containment>,
    /// Their live pids as last seen (`leftoverPids`).
    pub(super) pids: Vec<u32>,
    /// When to look again; `None` when nothing is held.
    pub(super) check_at: Option<Instant>,
}

impl Leftovers {
    /// Hold `contained`, whose processes `pids` outlived the stop.
    fn hold(&mut self, contained: Containment, pids: Vec<u32>) {
        self.held.push(contained);
        self.pids.extend(pids);
        self.pids.sort_unstable();
        self.pids.dedup();
        self.check_at = Some(Instant::now() + LEFTOVER_POLL);
    }

    /// Look again; `true` when the pids changed. What emptied is released.
    fn check(&mut self, cleanup: &Cleanup) -> bool {
        let mut pids = Vec::new();
        for c in std::mem::take(&mut self.held) {
            let left = c.leftover_pids();
            if left.is_empty() {
                c.release(cleanup);
            } else {
                pids.extend(left);
                self.held.push(c);
            }
        }
        pids.sort_unstable();
        pids.dedup();
        let changed = pids != self.pids;
        self.pids = pids;
        self.check_at = (!self.held.is_empty()).then(|| Instant::now() + LEFTOVER_POLL);
        changed
    }

    /// Let go of everything held (the host is removed).
    pub(super) fn release(&mut self, cleanup: &Cleanup) {
        for c in self.held.drain(..) {
            c.release(cleanup);
        }
        self.pids.clear();
        self.check_at = None;
    }
}

impl HostActor {
    pub(super) async fn request_stop(
        &mut self,
        timeout: Option<Duration>,
        reply: Reply<HostStatus>,
    ) {
        match self.state {
            HostState::Stopped => {
                let _ = reply.send(Ok(self.status()));
                return;
            }
            HostState::Stopping => {
                if let Some(s) = &mut self.stop {
                    s.waiters.push(reply);
                }
                return;
            }
            _ => {}
        }
        // The signal first, then let every other actor with a command
        // waiting send its own before this one does its bookkeeping: a
        // batch of stops (a JSON-RPC batch, a shutdown) is one batch of
        // signals, not one signal per actor turn.
        if let Some(c) = &self.contained {
            c.terminate();
            tokio::task::yield_now().await;
        }
        self.restart_at = None;
        self.stable_at = None;
        self.end_session("the host is stopping");
        let timeout = timeout.unwrap_or(self.spec.stop_timeout);
        let mut stopping = Stopping {
            kill_at: None,
            give_up_at: None,
            poll_at: None,
            emptied: None,
            no_events: false,
            waiters: vec![reply],
            restarts: Vec::new(),
        };
        if self.contained.is_some() {
            stopping.kill_at = Some(Instant::now() + timeout);
            if self.child.is_none() {
                stopping.poll_at = Some(Instant::now());
            }
        }
        let nothing_to_wait_for = self.contained.is_none();
        self.stop = Some(stopping);
        self.apply(Input::Stop, "stop requested");
        if nothing_to_wait_for {
            self.finish_stop(Vec::new()).await;
        }
    }

    /// The host's cgroup emptied (or inotify failed): check now.
    pub(super) fn on_cgroup_emptied(&mut self, r: std::io::Result<()>) {
        if let Some(s) = &mut self.stop {
            s.emptied = None;
            if let Err(e) = r {
                tracing::debug!(extension_id = %self.id, error = %e, "no cgroup events; polling the group");
                s.no_events = true;
            }
            s.poll_at = Some(Instant::now());
        }
    }

    pub(super) async fn on_stop_timer(&mut self) {
        let now = Instant::now();
        let Some(s) = &self.stop else { return };
        let (kill_due, poll_due, give_up_due) = (
            s.kill_at.is_some_and(|t| t <= now),
            s.poll_at.is_some_and(|t| t <= now),
            s.give_up_at.is_some_and(|t| t <= now),
        );
        if kill_due {
            if let Some(c) = &self.contained {
                tracing::warn!(extension_id = %self.id, pgid = c.group_id(), "stop timeout passed; sending SIGKILL to the process group");
            }
            self.kill_tree();
            if let Some(s) = &mut self.stop {
                s.kill_at = None;
                s.give_up_at = Some(now + KILL_GRACE);
            }
        }
        if poll_due {
            if let Some(s) = &mut self.stop {
                s.poll_at = None;
            }
            if self.child.is_none() {
                let group = self
                    .contained
                    .as_ref()
                    .is_some_and(Containment::group_alive);
                let populated = self
                    .contained
                    .as_ref()
                    .is_some_and(Containment::cgroup_populated);
                if !group && !populated {
                    self.finish_stop(Vec::new()).await;
                    return;
                }
                if !group {
                    // Only processes that left the group (setsid) remain,
                    // and they never saw the SIGTERM: kill them.
                    self.kill_tree();
                }
                if let Some(s) = &mut self.stop {
                    s.poll_at = Some(now + GROUP_POLL);
                    if !s.no_events
                        && let Some(c) = &self.contained
                    {
                        // Every descendant is in the cgroup: its emptying
                        // is the event; the poll only backs it up.
                        if s.emptied.is_none()
                            && let Some(emptied) = c.emptied()
                        {
                            tracing::debug!(extension_id = %self.id, "leftovers after the leader exited; waiting for its cgroup to empty");
                            s.emptied = Some(emptied);
                        }
                        if s.emptied.is_some() {
                            s.poll_at = Some(now + GROUP_POLL_BACKUP);
                        }
                    }
                }
            }
        }
        if give_up_due && self.child.is_none() {
            let left = self
                .contained
                .as_ref()
                .map(Containment::leftover_pids)
                .unwrap_or_default();
            tracing::warn!(extension_id = %self.id, pgid = ?self.contained.as_ref().map(Containment::group_id), pids = ?left, "processes outlived SIGKILL; the stop ends and reports them as leftovers");
            self.finish_stop(left).await;
        }
    }

    /// The second SIGINT of a shutdown: SIGKILL the group now.
    pub(super) fn kill_now(&mut self) {
        if self.stop.is_some() {
            self.kill_tree();
        }
        if let Some(s) = &mut self.stop {
            s.kill_at = None;
            s.give_up_at = Some(Instant::now() + KILL_GRACE);
        }
    }

    /// SIGKILL the host's process group and, where there is one, its cgroup
    /// (which also holds descendants that left the group).
    pub(super) fn kill_tree(&self) {
        if let Some(c) = &self.contained {
            c.kill();
        }
    }

    /// The process and its group are gone (or given up on): let go of them;
    /// the clean-up task removes the cgroups once empty, off this path.
    pub(super) fn release_contained(&mut self) {
        if let Some(c) = self.contained.take() {
            c.release(&self.cleanup);
        }
    }

    /// A leftover check is due.
    pub(super) fn on_leftovers_check(&mut self) {
        if self.leftovers.check(&self.cleanup) {
            if self.leftovers.pids.is_empty() {
                tracing::info!(extension_id = %self.id, "the leftovers of an earlier stop are gone");
            }
            self.bus.set_status(self.live());
        }
    }

    /// `stopped`, answering the waiters. `left`: what outlived SIGKILL,
    /// held and reported rather than waited for.
    async fn finish_stop(&mut self, left: Vec<u32>) {
        if let Some(c) = self.contained.take() {
            if left.is_empty() {
                c.release(&self.cleanup);
            } else {
                self.leftovers.hold(c, left);
            }
        }
        if let Some(r) = &self.records {
            r.down(&self.id);
        }
        let reason = match &self.last_exit {
            Some(e) if self.generation > 0 => format!(
                "stopped ({})",
                ExitOutcome {
                    code: e.code,
                    signal: e.signal
                }
            ),
            _ => "stopped".to_string(),
        };
        self.apply(Input::GroupGone, reason);
        let Some(stop) = self.stop.take() else { return };
        for w in stop.waiters {
            let _ = w.send(Ok(self.status()));
        }
        if !stop.restarts.is_empty() {
            self.attempts_used = 0;
            let r = self.start("restart requested").await;
            for w in stop.restarts {
                let _ = w.send(r.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spawn::{self, CgroupRoots, Cgroups, LaunchSpec, Limits};

    /// The reporting of what outlives a stop, on real processes: a held
    /// containment reports its live pids until they are gone, then is let
    /// go. (A process that survives SIGKILL cannot be made here; a live
    /// one stands in for it.)
    #[tokio::test]
    #[cfg_attr(not(unix), ignore = "needs /bin/sh")]
    async fn leftovers_are_reported_until_they_are_gone() {
        let mut launch = LaunchSpec::plain("/bin/sh", &["-c", "sleep 1000 & wait"]);
        let cgroups = Cgroups::make(
            "unit.left",
            &CgroupRoots::default(),
            Limits::default(),
            &mut launch,
        );
        let mut s = spawn::spawn(&launch).unwrap();
        let c = cgroups.contain(s.group);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while c.leftover_pids().len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the sleep never started"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut left = Leftovers::default();
        let cleanup = Cleanup::start();
        left.hold(c, vec![s.pid]);
        assert_eq!(left.pids, vec![s.pid]);
        assert!(left.check_at.is_some());
        // A check sees both processes.
        assert!(left.check(&cleanup));
        assert_eq!(left.pids.len(), 2);
        assert!(left.pids.contains(&s.pid));
        assert!(!left.check(&cleanup), "nothing changed");
        left.held[0].kill();
        s.child.wait().await.unwrap();
        while !left.pids.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the kill did not land"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
            left.check(&cleanup);
        }
        assert!(left.held.is_empty());
        assert_eq!(left.check_at, None);
    }

    #[test]
    fn the_status_omits_leftover_pids_when_there_are_none() {
        let status = |pids: Vec<u32>| HostStatus {
            extension_id: "a".into(),
            state: HostState::Stopped,
            pid: None,
            generation: 1,
            restart_count: 0,
            restart_budget: crate::protocol::RestartBudget {
                max_attempts: 3,
                attempts_left: 3,
            },
            next_restart_at: None,
            started_at: None,
            uptime_ms: None,
            last_exit: None,
            entry: "/e.js".into(),
            node: None,
            ready: false,
            ready_at: None,
            memory_max_mb: None,
            cpu_max_percent: None,
            leftover_pids: pids,
        };
        let none = serde_json::to_value(status(Vec::new())).unwrap();
        assert!(none.get("leftoverPids").is_none(), "{none}");
        let some = serde_json::to_value(status(vec![7, 9])).unwrap();
        assert_eq!(some["leftoverPids"], serde_json::json!([7, 9]));
        let back: HostStatus = serde_json::from_value(none).unwrap();
        assert!(back.leftover_pids.is_empty());
    }
}
