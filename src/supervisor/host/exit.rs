//! What follows an exit: an exit during a stop goes to the stop path; an
//! unrequested one kills the rest of the group and applies the restart
//! policy (backoff within the budget, else `crashed`). Also the backoff's
//! end and the stable timer that restores the budget.

use std::time::SystemTime;

use tokio::time::Instant;

use super::actor::HostActor;
use crate::protocol::LastExit;
use crate::spawn::ExitOutcome;
use crate::state::{HostState, Input};
use crate::supervisor::budget::{AfterFailure, Budget};

impl HostActor {
    pub(super) fn on_exit(&mut self, res: std::io::Result<std::process::ExitStatus>) {
        let outcome = match res {
            Ok(status) => ExitOutcome::from(status),
            Err(e) => {
                tracing::error!(extension_id = %self.id, error = %e, "waiting for the host failed");
                ExitOutcome {
                    code: None,
                    signal: None,
                }
            }
        };
        self.child = None;
        self.pid = None;
        self.started = None;
        self.stable_at = None;
        self.end_session("the host exited");
        self.last_exit = Some(LastExit {
            code: outcome.code,
            signal: outcome.signal,
            at: crate::time::rfc3339_now(),
        });
        if self.state == HostState::Stopping {
            if let Some(s) = &mut self.stop {
                s.poll_at = Some(Instant::now());
            }
            return;
        }
        // Unrequested exit: the group's (and cgroup's) leftovers go with it.
        self.kill_tree();
        self.release_contained();
        if let Some(r) = &self.records {
            r.down(&self.id);
        }
        match self.state {
            HostState::Running => {
                tracing::warn!(extension_id = %self.id, "{outcome}");
                self.apply(Input::ExitedUnexpectedly, outcome.to_string());
            }
            // Already judged failed (see `fail`): this is the kill landing.
            HostState::Unhealthy => {}
            other => {
                tracing::error!(extension_id = %self.id, state = %other, "{outcome} in an unexpected state");
                return;
            }
        }
        let policy = self.spec.restart;
        let cause = match self.failure.take() {
            Some(f) => f.to_string(),
            None => outcome.to_string(),
        };
        let mut budget = self.budget();
        match budget.on_failure() {
            AfterFailure::Restart { attempt } => {
                self.attempts_used = budget.used;
                let delay = policy.backoff_for(attempt);
                self.restart_at = Some((Instant::now() + delay, SystemTime::now() + delay));
                self.apply(
                    Input::RetryWithinBudget,
                    format!(
                        "restarting in {} ms (attempt {} of {})",
                        crate::time::millis(delay),
                        budget.used,
                        policy.max_attempts
                    ),
                );
            }
            AfterFailure::Exhausted => {
                self.apply(
                    Input::BudgetExhausted,
                    format!("restart budget exhausted: {cause}"),
                );
            }
        }
    }

    pub(super) async fn on_backoff_elapsed(&mut self) {
        self.restart_at = None;
        if self.state != HostState::Restarting {
            return;
        }
        self.restart_count += 1;
        if self.apply(Input::BackoffElapsed, "backoff elapsed") {
            // A failure is published as `crashed`; nobody waits for this one.
            let _ = self.spawn_in_starting().await;
        }
    }

    pub(super) fn on_stable(&mut self) {
        self.stable_at = None;
        // The exit may have landed in the same instant without being seen
        // yet: a process that is gone has not run stably.
        if let Some(child) = &mut self.child
            && !matches!(child.try_wait(), Ok(None))
        {
            return;
        }
        let mut budget = self.budget();
        if self.state == HostState::Running && budget.on_stable() {
            tracing::info!(extension_id = %self.id, "running stably; restart budget restored");
            self.attempts_used = budget.used;
            self.bus.set_status(self.live());
        }
    }

    fn budget(&self) -> Budget {
        Budget {
            max: self.spec.restart.max_attempts,
            used: self.attempts_used,
        }
    }
}
