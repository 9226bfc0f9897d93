//! dscode-hostd: a supervisor for DSCode extension hosts.
//!
//! Layers, each depending only on the ones below it:
//!
//! - [`daemon`]: the composition root the binary runs (socket, lock, signals);
//! - [`client`]: the typed client (used by `dscode-hostctl`);
//! - [`rpc`]: JSON-RPC 2.0, one message per line, over a local socket;
//! - [`protocol`]: the wire shapes `rpc` and `client` share (serde only);
//! - [`supervisor`]: one actor per host, the event bus;
//! - [`state`], [`spawn`], [`lines`]: the pure state machine, process control,
//!   bounded line framing.
//!
//! See `ARCHITECTURE.md` for the map and the invariants.

#[cfg(target_os = "linux")]
pub mod cgroup;
pub mod client;
pub mod config;
pub mod daemon;
#[cfg(target_os = "linux")]
pub mod inotify;
pub mod ipc;
pub mod lines;
pub mod paths;
pub mod protocol;
pub mod rpc;
#[cfg(target_os = "linux")]
pub mod sandbox;
pub mod spawn;
pub mod state;
pub mod supervisor;
pub mod time;
pub mod verify;
