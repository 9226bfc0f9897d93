//! The control protocol's wire shapes: the one API boundary between the
//! daemon and its clients.
//!
//! It depends only on serde and serde_json. The RPC layer ([`crate::rpc`])
//! reads these params and writes these results; the client
//! ([`crate::client`]), `dscode-hostctl` and `hostd-bench` write and read the
//! same types, and every method and notification name is spelt once, in
//! [`names`]. `proto-docs/control-protocol.md` is the prose reference,
//! `proto-docs/openrpc.json` the machine-readable one.
//!
//! Lower layers (`supervisor`, `spawn`, `ipc`) fill these types too: they
//! are the shared vocabulary, and this module depends on nothing of the
//! crate. The daemon ↔ host protocol (`proto-docs/ext-host-protocol.md`) is
//! a different one; its frames are `crate::ipc::frame`'s.

pub mod codes;
pub mod events;
pub mod names;
pub mod options;
pub mod params;
pub mod results;
pub mod status;

pub use events::{EventKind, HostMessage, LogLine, StateEvent, Stream};
pub use options::{HostOptions, RestartOptions};
pub use params::{
    IdParams, LogsParams, NoParams, RelayParams, RespondParams, StartParams, StopParams,
    SubscribeParams,
};
pub use results::{
    CpuLimitInfo, DeliveredResult, HostFailure, HostList, InfoResult, Lagged, LogEvent, LogsResult,
    MemoryLimitInfo, Partial, Recovered, ReloadResult, RemovedResult, SandboxInfo, SentResult,
    ShutdownResult,
};
pub use status::{
    GroupUsage, HostState, HostStatus, HostUsage, IpcCounts, LastExit, RestartBudget,
};
