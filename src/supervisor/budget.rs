//! The restart budget: how many automatic restarts a host has left, and when
//! running "stably" gives them back. Pure, so it is tested table-driven; the
//! host actor owns one and feeds it what happens.
//!
//! The stable timer starts when the host spawns if the daemon does not wait
//! for readiness (`readyTimeoutMs: 0`), else only when the host becomes
//! ready: a host that never becomes ready never earns its budget back, so it
//! ends `crashed` after `maxAttempts` instead of restarting forever.

/// A host's restart budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max: u32,
    pub used: u32,
}

/// What to do about an unexpected end of a host's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Restart with the backoff for this 0-based attempt.
    Restart { attempt: u32 },
    /// No attempts left: the host is `crashed`.
    Exhausted,
}

/// Something that happens to a host, as far as its budget cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Spawned,
    Ready,
    /// The stable timer fired.
    StableElapsed,
    /// The process ended unexpectedly or was judged failed.
    Failed,
}

impl Budget {
    pub fn new(max: u32) -> Self {
        Budget { max, used: 0 }
    }

    pub fn left(&self) -> u32 {
        self.max.saturating_sub(self.used)
    }

    /// Whether the stable timer is armed by `event`.
    pub fn arms_stable_timer(event: Event, ready_required: bool) -> bool {
        match event {
            Event::Spawned => !ready_required,
            Event::Ready => ready_required,
            Event::StableElapsed | Event::Failed => false,
        }
    }

    /// The stable timer fired while the host runs: restore the budget.
    /// Returns whether anything was restored.
    pub fn on_stable(&mut self) -> bool {
        let restored = self.used > 0;
        self.used = 0;
        restored
    }

    /// An unexpected exit or a judged failure.
    pub fn on_failure(&mut self) -> AfterFailure {
        if self.used < self.max {
            let attempt = self.used;
            self.used += 1;
            AfterFailure::Restart { attempt }
        } else {
            AfterFailure::Exhausted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event::*;

    /// Play `events` for a host with `max` attempts; the stable timer fires
    /// only if armed since the last spawn. Returns the restarts granted and
    /// whether the host ended crashed.
    fn play(max: u32, ready_required: bool, events: &[Event]) -> (u32, bool) {
        let mut b = Budget::new(max);
        let mut armed = false;
        let mut restarts = 0;
        let mut crashed = false;
        for &e in events {
            match e {
                Spawned => armed = Budget::arms_stable_timer(e, ready_required),
                Ready => armed |= Budget::arms_stable_timer(e, ready_required),
                StableElapsed if armed => {
                    b.on_stable();
                }
                StableElapsed => {}
                Failed => {
                    armed = false;
                    match b.on_failure() {
                        AfterFailure::Restart { .. } => restarts += 1,
                        AfterFailure::Exhausted => crashed = true,
                    }
                }
            }
        }
        (restarts, crashed)
    }

    #[test]
    fn the_budget_table() {
        // A host that spawns, outlives the stable time without ever being
        // ready, then fails: over and over.
        let never_ready: Vec<Event> = std::iter::repeat_n([Spawned, StableElapsed, Failed], 10)
            .flatten()
            .collect();
        // The same host once ready each time.
        let ready_each_time: Vec<Event> =
            std::iter::repeat_n([Spawned, Ready, StableElapsed, Failed], 10)
                .flatten()
                .collect();
        let quick_crashes: Vec<Event> = std::iter::repeat_n([Spawned, Failed], 10)
            .flatten()
            .collect();
        // name, maxAttempts, ready required, events, (restarts, crashed)
        type Row<'a> = (&'a str, u32, bool, &'a [Event], (u32, bool));
        let rows: &[Row] = &[
            // Readiness required: never ready never earns the budget back.
            (
                "never ready, ready required",
                3,
                true,
                &never_ready,
                (3, true),
            ),
            // Readiness not required: running long enough is stable.
            (
                "never ready, not required",
                3,
                false,
                &never_ready,
                (10, false),
            ),
            ("ready then stable", 3, true, &ready_each_time, (10, false)),
            ("crash loop", 3, true, &quick_crashes, (3, true)),
            (
                "crash loop, not required",
                3,
                false,
                &quick_crashes,
                (3, true),
            ),
            ("no attempts", 0, true, &[Spawned, Failed], (0, true)),
            (
                "stable before ready does not count",
                1,
                true,
                &[
                    Spawned,
                    StableElapsed,
                    Failed,
                    Spawned,
                    StableElapsed,
                    Failed,
                ],
                (1, true),
            ),
            (
                "ready after the stable time: the timer starts then",
                1,
                true,
                &[Spawned, Failed, Spawned, Ready, StableElapsed, Failed],
                (2, false),
            ),
        ];
        for (name, max, required, events, want) in rows {
            assert_eq!(play(*max, *required, events), *want, "{name}");
        }
    }

    #[test]
    fn left_and_restore() {
        let mut b = Budget::new(2);
        assert_eq!(b.on_failure(), AfterFailure::Restart { attempt: 0 });
        assert_eq!(b.on_failure(), AfterFailure::Restart { attempt: 1 });
        assert_eq!(b.left(), 0);
        assert_eq!(b.on_failure(), AfterFailure::Exhausted);
        assert!(b.on_stable());
        assert_eq!(b.left(), 2);
        assert!(!b.on_stable());
    }
}
