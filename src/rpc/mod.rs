//! The control protocol: JSON-RPC 2.0 methods over a line-delimited local
//! socket.
//!
//! - [`methods`] registers every method on a jsonrpsee [`RpcModule`] and maps
//!   supervisor errors to JSON-RPC error codes;
//! - [`transport`] frames one message per line and dispatches to the module;
//! - [`server`] accepts connections, checks the peer and enforces limits.
//!
//! This is the only layer that knows JSON-RPC.

pub mod codes;
pub mod methods;
pub mod params;
pub mod server;
pub mod subscriptions;
pub mod transport;

pub use methods::{Control, DaemonInfo, DaemonState, RpcContext, build_module};
