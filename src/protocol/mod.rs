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
//! Not here yet: a host's status, its usage, state events and log lines are
//! still defined by the supervisor (they move here once the supervisor is
//! split); [`results`] is generic over them meanwhile.

pub mod codes;
pub mod names;
pub mod params;
pub mod results;

pub use params::{
    IdParams, LogsParams, NoParams, RelayParams, RespondParams, RestartParams, StartParams,
    StopParams, SubscribeParams,
};
pub use results::{
    DeliveredResult, HostFailure, HostList, InfoResult, Lagged, LogEvent, LogsResult, Partial,
    ReloadResult, RemovedResult, SentResult, ShutdownResult,
};
