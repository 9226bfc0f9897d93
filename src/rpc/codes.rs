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
/// The Node binary failed verification; the message gives the path and the
/// expected and actual hashes.
pub const VERIFY_FAILED: i32 = -32004;
pub const SHUTTING_DOWN: i32 = -32005;
/// `daemon.reload` found an invalid config; the previous one is kept.
pub const RELOAD_FAILED: i32 = -32007;
/// Too many subscriptions on one connection.
pub const TOO_MANY_SUBSCRIPTIONS: i32 = -32006;
/// `waitReady`: the host exited (or was judged failed) before it was ready.
pub const EXITED_BEFORE_READY: i32 = -32011;
/// `waitReady`: the host was not ready within `readyTimeoutMs`.
pub const READY_TIMEOUT: i32 = -32012;
/// `host.request`: the host answered `<type>-error`.
pub const HOST_ERROR: i32 = -32020;
/// `host.request`/`host.send`: the host is not ready.
pub const NOT_READY: i32 = -32021;
/// `host.request`: no reply within `timeoutMs`.
pub const REQUEST_TIMEOUT: i32 = -32022;
/// `host.request`: the host exited or its channel closed while pending.
pub const CHANNEL_CLOSED: i32 = -32023;
/// `host.respond`: no such pending host request (answered already, timed out).
pub const NO_SUCH_HOST_REQUEST: i32 = -32024;
