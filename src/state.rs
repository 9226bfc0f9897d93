//! The per-host lifecycle state machine, as a pure function.
//!
//! This module is the specification from the seed (`ExtensionHostProcess` in
//! `dscode-extension-host` 0.1.0) written as data. It imports nothing async and
//! owns no process: the host actor in `supervisor::host` feeds it [`Input`]s and
//! acts on the state it returns.
//!
//! The seed's transition table:
//!
//! ```text
//!   Stopped    -> Starting    (start requested)
//!   Starting   -> Running     (process spawned)
//!   Starting   -> Crashed     (spawn failed)
//!   Running    -> Unhealthy   (process exited unexpectedly, or judged failed:
//!                              not ready in time, unresponsive, bad IPC)
//!   Running    -> Stopping    (stop requested)
//!   Unhealthy  -> Restarting  (within the restart budget)
//!   Unhealthy  -> Crashed     (budget exhausted)
//!   Restarting -> Starting    (backoff elapsed)
//!   Stopping   -> Stopped     (process group gone)
//!   Crashed    -> Starting    (explicit start after a crash)
//! ```
//!
//! plus the seed's one documented exception: stop is permissive, so a stop
//! request forces `Stopping` from every state but `Stopped`
//! ([`is_forced_stop`]).

pub use crate::protocol::HostState;

/// What happened to a host. The actor turns events into inputs; [`step`]
/// turns an input and the current state into the next state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    /// `host.start`, `host.restart` or an autostart asked for the host to run.
    Start,
    /// The child process was spawned.
    Spawned,
    /// Spawning failed (Node not found, exec error).
    SpawnFailed,
    /// The child exited without a stop having been requested.
    ExitedUnexpectedly,
    /// The running child is judged failed (not ready in time, unresponsive,
    /// broke the IPC protocol) and is about to be killed.
    Failed,
    /// After an unexpected exit: the restart budget has attempts left.
    RetryWithinBudget,
    /// After an unexpected exit: the restart budget is exhausted.
    BudgetExhausted,
    /// The restart backoff timer fired.
    BackoffElapsed,
    /// A stop was requested (permissive: valid from every state).
    Stop,
    /// The stopped host's process group is empty.
    GroupGone,
}

impl Input {
    pub const ALL: [Input; 10] = [
        Input::Start,
        Input::Spawned,
        Input::SpawnFailed,
        Input::ExitedUnexpectedly,
        Input::Failed,
        Input::RetryWithinBudget,
        Input::BudgetExhausted,
        Input::BackoffElapsed,
        Input::Stop,
        Input::GroupGone,
    ];
}

/// A transition the table does not allow. Logged by the caller, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid transition: {input:?} in state {from}")]
pub struct InvalidTransition {
    pub from: HostState,
    pub input: Input,
}

/// The seed's transition table, exactly.
pub fn is_allowed(from: HostState, to: HostState) -> bool {
    use HostState::*;
    matches!(
        (from, to),
        (Stopped, Starting)
            | (Starting, Running)
            | (Starting, Crashed)
            | (Running, Unhealthy)
            | (Running, Stopping)
            | (Unhealthy, Restarting)
            | (Unhealthy, Crashed)
            | (Restarting, Starting)
            | (Stopping, Stopped)
            | (Crashed, Starting)
    )
}

/// The seed's permissive stop: any state but `Stopped` may be forced to
/// `Stopping`.
pub fn is_forced_stop(from: HostState, to: HostState) -> bool {
    to == HostState::Stopping && from != HostState::Stopped && from != HostState::Stopping
}

/// Whether `from -> to` is a transition a subscriber may ever observe.
pub fn is_valid_edge(from: HostState, to: HostState) -> bool {
    is_allowed(from, to) || is_forced_stop(from, to)
}

/// The state machine. Returns the next state; `Ok(from)` means "no change"
/// (a stop of a stopped or stopping host).
pub fn step(from: HostState, input: Input) -> Result<HostState, InvalidTransition> {
    use HostState::*;
    let to = match (from, input) {
        (Stopped | Crashed | Restarting, Input::Start) => Starting,
        (Starting, Input::Spawned) => Running,
        (Starting, Input::SpawnFailed) => Crashed,
        (Running, Input::ExitedUnexpectedly | Input::Failed) => Unhealthy,
        (Unhealthy, Input::RetryWithinBudget) => Restarting,
        (Unhealthy, Input::BudgetExhausted) => Crashed,
        (Restarting, Input::BackoffElapsed) => Starting,
        (Stopped | Stopping, Input::Stop) => from,
        (_, Input::Stop) => Stopping,
        (Stopping, Input::GroupGone) => Stopped,
        _ => return Err(InvalidTransition { from, input }),
    };
    debug_assert!(to == from || is_valid_edge(from, to), "{from} -> {to}");
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::HostState::*;
    use super::*;

    /// Every (state, input) pair with its expected outcome; `None` = rejected.
    const TABLE: &[(HostState, Input, Option<HostState>)] = &[
        (Stopped, Input::Start, Some(Starting)),
        (Stopped, Input::Spawned, None),
        (Stopped, Input::SpawnFailed, None),
        (Stopped, Input::ExitedUnexpectedly, None),
        (Stopped, Input::Failed, None),
        (Stopped, Input::RetryWithinBudget, None),
        (Stopped, Input::BudgetExhausted, None),
        (Stopped, Input::BackoffElapsed, None),
        (Stopped, Input::Stop, Some(Stopped)),
        (Stopped, Input::GroupGone, None),
        (Starting, Input::Start, None),
        (Starting, Input::Spawned, Some(Running)),
        (Starting, Input::SpawnFailed, Some(Crashed)),
        (Starting, Input::ExitedUnexpectedly, None),
        (Starting, Input::Failed, None),
        (Starting, Input::RetryWithinBudget, None),
        (Starting, Input::BudgetExhausted, None),
        (Starting, Input::BackoffElapsed, None),
        (Starting, Input::Stop, Some(Stopping)),
        (Starting, Input::GroupGone, None),
        (Running, Input::Start, None),
        (Running, Input::Spawned, None),
        (Running, Input::SpawnFailed, None),
        (Running, Input::ExitedUnexpectedly, Some(Unhealthy)),
        (Running, Input::Failed, Some(Unhealthy)),
        (Running, Input::RetryWithinBudget, None),
        (Running, Input::BudgetExhausted, None),
        (Running, Input::BackoffElapsed, None),
        (Running, Input::Stop, Some(Stopping)),
        (Running, Input::GroupGone, None),
        (Unhealthy, Input::Start, None),
        (Unhealthy, Input::Spawned, None),
        (Unhealthy, Input::SpawnFailed, None),
        (Unhealthy, Input::ExitedUnexpectedly, None),
        (Unhealthy, Input::Failed, None),
        (Unhealthy, Input::RetryWithinBudget, Some(Restarting)),
        (Unhealthy, Input::BudgetExhausted, Some(Crashed)),
        (Unhealthy, Input::BackoffElapsed, None),
        (Unhealthy, Input::Stop, Some(Stopping)),
        (Unhealthy, Input::GroupGone, None),
        (Restarting, Input::Start, Some(Starting)),
        (Restarting, Input::Spawned, None),
        (Restarting, Input::SpawnFailed, None),
        (Restarting, Input::ExitedUnexpectedly, None),
        (Restarting, Input::Failed, None),
        (Restarting, Input::RetryWithinBudget, None),
        (Restarting, Input::BudgetExhausted, None),
        (Restarting, Input::BackoffElapsed, Some(Starting)),
        (Restarting, Input::Stop, Some(Stopping)),
        (Restarting, Input::GroupGone, None),
        (Stopping, Input::Start, None),
        (Stopping, Input::Spawned, None),
        (Stopping, Input::SpawnFailed, None),
        (Stopping, Input::ExitedUnexpectedly, None),
        (Stopping, Input::Failed, None),
        (Stopping, Input::RetryWithinBudget, None),
        (Stopping, Input::BudgetExhausted, None),
        (Stopping, Input::BackoffElapsed, None),
        (Stopping, Input::Stop, Some(Stopping)),
        (Stopping, Input::GroupGone, Some(Stopped)),
        (Crashed, Input::Start, Some(Starting)),
        (Crashed, Input::Spawned, None),
        (Crashed, Input::SpawnFailed, None),
        (Crashed, Input::ExitedUnexpectedly, None),
        (Crashed, Input::Failed, None),
        (Crashed, Input::RetryWithinBudget, None),
        (Crashed, Input::BudgetExhausted, None),
        (Crashed, Input::BackoffElapsed, None),
        (Crashed, Input::Stop, Some(Stopping)),
        (Crashed, Input::GroupGone, None),
    ];

    #[test]
    fn table_covers_every_pair() {
        assert_eq!(TABLE.len(), HostState::ALL.len() * Input::ALL.len());
        for s in HostState::ALL {
            for i in Input::ALL {
                assert!(
                    TABLE.iter().any(|(a, b, _)| *a == s && *b == i),
                    "{s:?} {i:?} missing"
                );
            }
        }
    }

    #[test]
    fn step_matches_table() {
        for &(from, input, expected) in TABLE {
            let got = step(from, input).ok();
            assert_eq!(got, expected, "{from:?} + {input:?}");
        }
    }

    #[test]
    fn seed_table_has_exactly_ten_edges() {
        let n = HostState::ALL
            .iter()
            .flat_map(|a| HostState::ALL.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| is_allowed(*a, *b))
            .count();
        assert_eq!(n, 10);
    }

    #[test]
    fn every_non_stop_transition_is_in_the_seed_table() {
        for &(from, input, expected) in TABLE {
            if let Some(to) = expected
                && to != from
                && input != Input::Stop
            {
                assert!(is_allowed(from, to), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn states_serialize_lowercase() {
        for s in HostState::ALL {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn input() -> impl Strategy<Value = Input> {
            proptest::sample::select(Input::ALL.to_vec())
        }

        proptest! {
            #[test]
            fn random_inputs_never_leave_the_table(inputs in proptest::collection::vec(input(), 0..64)) {
                let mut s = Stopped;
                for i in inputs {
                    match step(s, i) {
                        Ok(to) => {
                            prop_assert!(to == s || is_valid_edge(s, to), "{:?} -> {:?}", s, to);
                            s = to;
                        }
                        Err(e) => prop_assert_eq!(e.from, s),
                    }
                }
                // Stop, then the group going away, always ends in Stopped.
                let s = step(s, Input::Stop).unwrap();
                let s = if s == Stopping { step(s, Input::GroupGone).unwrap() } else { s };
                prop_assert_eq!(s, Stopped);
            }
        }
    }
}
