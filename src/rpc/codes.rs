//! JSON-RPC error codes: the standard ones and dscode-hostd's own.

pub use jsonrpsee_types::error::{
    INVALID_PARAMS_CODE, INVALID_REQUEST_CODE, METHOD_NOT_FOUND_CODE, PARSE_ERROR_CODE,
};

/// Connection refused for load (`too many connections`).
pub const TOO_MANY_CONNECTIONS: i32 = -32000;
/// `data: {"extensionId"}`.
pub const UNKNOWN_HOST: i32 = -32001;
/// `data: {"extensionId", "state"}`.
pub const INVALID_TRANSITION: i32 = -32002;
/// The message names the path and the OS error.
pub const SPAWN_FAILED: i32 = -32003;
pub const SHUTTING_DOWN: i32 = -32005;
/// `daemon.reload` found an invalid config; the previous one is kept.
pub const RELOAD_FAILED: i32 = -32007;
/// Too many subscriptions on one connection.
pub const TOO_MANY_SUBSCRIPTIONS: i32 = -32006;
