//! Every method and notification name of the control protocol, the one
//! place they are spelt out (`proto-docs/openrpc.json` documents each).

/// `rpc.discover`: the OpenRPC document.
pub const RPC_DISCOVER: &str = "rpc.discover";
pub const DAEMON_INFO: &str = "daemon.info";
pub const DAEMON_SHUTDOWN: &str = "daemon.shutdown";
pub const DAEMON_RELOAD: &str = "daemon.reload";

pub const HOST_START: &str = "host.start";
pub const HOST_STOP: &str = "host.stop";
pub const HOST_RESTART: &str = "host.restart";
pub const HOST_STATUS: &str = "host.status";
pub const HOST_USAGE: &str = "host.usage";
pub const HOST_LIST: &str = "host.list";
pub const HOST_REMOVE: &str = "host.remove";
pub const HOST_LOGS: &str = "host.logs";

/// A relayed request (its `-partial` replies come as [`HOST_PARTIAL`]).
pub const HOST_REQUEST: &str = "host.request";
/// A relayed message that expects no reply.
pub const HOST_SEND: &str = "host.send";
/// The answer to a host-originated request ([`HOST_MESSAGE`]).
pub const HOST_RESPOND: &str = "host.respond";

/// State events, as [`HOST_STATE_CHANGED`] notifications.
pub const HOST_SUBSCRIBE: &str = "host.subscribe";
/// Output lines of one host, as [`HOST_LOG`] notifications.
pub const HOST_SUBSCRIBE_LOGS: &str = "host.subscribeLogs";
/// Host-originated requests, as [`HOST_MESSAGE`] notifications.
pub const HOST_SUBSCRIBE_MESSAGES: &str = "host.subscribeMessages";
/// Ends any of the three subscriptions.
pub const HOST_UNSUBSCRIBE: &str = "host.unsubscribe";
/// Takes over the lease of a host started with `lease` (#15 item 9): the
/// calling connection becomes its holder. Named ahead of its method, which
/// joins [`METHODS`] when the daemon registers it.
pub const HOST_CLAIM: &str = "host.claim";

/// Every method, in the order `proto-docs/openrpc.json` lists them.
pub const METHODS: &[&str] = &[
    DAEMON_INFO,
    DAEMON_SHUTDOWN,
    DAEMON_RELOAD,
    HOST_START,
    HOST_STOP,
    HOST_RESTART,
    HOST_STATUS,
    HOST_USAGE,
    HOST_LIST,
    HOST_REMOVE,
    HOST_LOGS,
    HOST_SUBSCRIBE,
    HOST_SUBSCRIBE_LOGS,
    HOST_UNSUBSCRIBE,
    RPC_DISCOVER,
    HOST_REQUEST,
    HOST_SEND,
    HOST_SUBSCRIBE_MESSAGES,
    HOST_RESPOND,
];

/// Notifications the daemon sends.
pub const HOST_STATE_CHANGED: &str = "host.stateChanged";
pub const HOST_LOG: &str = "host.log";
pub const HOST_MESSAGE: &str = "host.message";
pub const HOST_PARTIAL: &str = "host.partial";
