//! The control protocol's server side: JSON-RPC 2.0 methods over a
//! line-delimited local socket. The wire shapes are [`crate::protocol`]'s.
//!
//! Dependencies run one way: [`server`] → [`transport`] → [`connection`] ←
//! [`subscriptions`] ← [`methods`].
//!
//! - [`server`] accepts connections, checks the peer and enforces limits;
//! - [`transport`] frames one message per line and dispatches to the methods;
//!   `envelope` checks and classifies each message's envelope for it;
//! - [`connection`] is one connection as methods see it (its queue, its
//!   subscriptions) and the [`MethodTable`]: what each method takes from it;
//! - [`subscriptions`] forwards a feed as notifications;
//! - [`methods`] registers every method on a jsonrpsee [`RpcModule`];
//!   `errors` maps supervisor errors to JSON-RPC error codes and data;
//! - [`params`] parses params into the protocol's structs.
//!
//! This is the only layer that knows JSON-RPC.
//!
//! [`RpcModule`]: jsonrpsee::RpcModule

pub mod connection;
mod envelope;
mod errors;
#[doc(hidden)]
pub mod fuzzing;
pub mod methods;
pub mod params;
pub mod server;
pub mod subscriptions;
pub mod transport;

pub use connection::MethodTable;
pub use methods::{Control, DaemonInfo, DaemonState, RpcContext, build_module};
