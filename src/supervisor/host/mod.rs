//! One actor per host: the only owner of the host's child process, state
//! machine and timers.
//!
//! - [`handle`]: the handle others hold ([`HostHandle`]) and the commands it
//!   sends, and the actor's creation ([`spawn_actor`]);
//! - `actor`: the actor's loop, its commands, its status, and the IPC
//!   session's events;
//! - `exit`: what follows an exit (the restart policy), the backoff, the
//!   stable timer;
//! - `start`: a start (preparation on a blocking thread, the fork on the
//!   spawner thread, the pipes and the IPC session of the new process);
//! - `stop`: the stop path (SIGTERM, the kill deadline, waiting for the
//!   group or cgroup to empty, leftovers that outlive SIGKILL).
//!
//! The actor never blocks on a stop or a backoff: both are deadlines in its
//! `select!` loop, so it keeps answering commands while a host is stopping
//! (a second stop joins the first; a start is refused with the state). A
//! start is the exception: see `start`.
//!
//! Processes are held through a [`crate::spawn::Containment`], so nothing
//! here is platform code.

mod actor;
mod exit;
pub mod handle;
mod start;
mod stop;

pub use handle::{ActorParts, HostHandle, spawn_actor};
