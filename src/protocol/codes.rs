//! JSON-RPC error codes: the standard ones and dscode-hostd's own.

/// The line is not JSON.
pub const PARSE_ERROR_CODE: i32 = -32700;
/// The JSON is not a valid request (also: a line over the size limit).
pub const INVALID_REQUEST_CODE: i32 = -32600;
pub const METHOD_NOT_FOUND_CODE: i32 = -32601;
/// `data: {"field"}` names the offending parameter.
pub const INVALID_PARAMS_CODE: i32 = -32602;
pub const INTERNAL_ERROR_CODE: i32 = -32603;

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
