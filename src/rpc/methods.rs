//! Every control method, registered on a jsonrpsee [`RpcModule`].
//!
//! Handlers parse params, call the supervisor (which only sends messages to
//! host actors) and turn its errors into JSON-RPC errors (`errors.rs`).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use jsonrpsee::{ResponsePayload, RpcModule};
use jsonrpsee_types::{ErrorObject, ErrorObjectOwned};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::connection::{Access, CallId, Connection, MethodTable};
use super::params::{invalid_params, parse};
use super::subscriptions;
use crate::protocol::names;
use crate::protocol::results::{
    DeliveredResult, HostList, InfoResult, Lagged, LogEvent, LogsResult, PROTOCOL_VERSION, Partial,
    ReloadResult, RemovedResult, SentResult, ShutdownResult,
};
use crate::protocol::{LogLine, Recovered, codes, params};
use crate::supervisor::events::{self, BusEvent, filter_matches};
use crate::supervisor::messages::HubMessage;
use crate::supervisor::{Supervisor, SupervisorError};

/// Facts about this daemon for `daemon.info`.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub pid: u32,
    pub started_at: SystemTime,
    pub started: Instant,
    pub socket: PathBuf,
    /// The hosts a previous daemon left behind when it died.
    pub recovered: Vec<Recovered>,
}

pub use crate::protocol::HostFailure;

/// What a reload did not (yet) apply.
#[derive(Debug, Clone, Default)]
pub struct ReloadReport {
    /// Declarations or autostarts that failed.
    pub failed: Vec<HostFailure>,
    /// Hosts an editor runs with its own spec: their declaration applies
    /// once they stop.
    pub deferred: Vec<String>,
}

impl From<ReloadReport> for ReloadResult {
    fn from(r: ReloadReport) -> Self {
        ReloadResult {
            deferred: r.deferred,
            failed: r.failed,
            ok: true,
        }
    }
}

/// Requests from the RPC layer to the daemon's main loop.
pub enum Control {
    Reload(oneshot::Sender<Result<ReloadReport, String>>),
    Shutdown,
}

/// What `daemon.info` shows about the daemon beyond the supervisor.
#[derive(Debug, Default)]
pub struct DaemonState {
    pub config_path: Option<PathBuf>,
    pub last_reload_error: Mutex<Option<String>>,
    /// What the kernel supports of the sandbox, probed at start-up.
    pub sandbox: Option<crate::protocol::SandboxInfo>,
}

/// What every handler can reach.
pub struct RpcContext {
    pub supervisor: Arc<Supervisor>,
    pub info: DaemonInfo,
    /// Requests to the daemon's main loop (reload, shutdown).
    pub control: mpsc::Sender<Control>,
    pub state: Arc<DaemonState>,
}

type RpcResult<T> = Result<T, ErrorObjectOwned>;

/// `-32602` for a duration past a day (see `supervisor::MAX_SETTING_MS`).
fn bounded_ms(field: &str, v: Option<u64>) -> Result<(), ErrorObjectOwned> {
    match v {
        Some(ms) if ms > crate::supervisor::MAX_SETTING_MS => Err(invalid_params(
            field,
            &format!(
                "must be at most {} (a day)",
                crate::supervisor::MAX_SETTING_MS
            ),
        )),
        _ => Ok(()),
    }
}

/// The OpenRPC document of this protocol, served by `rpc.discover`.
pub const OPENRPC: &str = include_str!("../../proto-docs/openrpc.json");

/// Register every method of the control protocol.
pub fn build_module(ctx: RpcContext) -> RpcModule<RpcContext> {
    let mut m = RpcModule::new(ctx);
    // Re-encoded compactly: the file is pretty-printed, the wire is one line.
    let openrpc = serde_json::value::to_raw_value(
        &serde_json::from_str::<serde_json::Value>(OPENRPC)
            .expect("proto-docs/openrpc.json is valid JSON"),
    )
    .expect("JSON re-encodes");
    m.register_method(names::RPC_DISCOVER, move |p, _, _| -> RpcResult<_> {
        parse::<params::NoParams>(&p)?;
        Ok(openrpc.clone())
    })
    .expect("unique method name");
    m.register_method(names::DAEMON_INFO, |p, ctx, _| -> RpcResult<InfoResult> {
        parse::<params::NoParams>(&p)?;
        let hosts = ctx.supervisor.list();
        let mut by_state = BTreeMap::new();
        for h in &hosts {
            *by_state.entry(h.state.as_str().to_string()).or_insert(0) += 1;
        }
        Ok(InfoResult {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: PROTOCOL_VERSION,
            pid: ctx.info.pid,
            started_at: crate::time::rfc3339(ctx.info.started_at),
            uptime_ms: crate::time::millis(ctx.info.started.elapsed()),
            socket: ctx.info.socket.display().to_string(),
            hosts: hosts.len(),
            hosts_by_state: by_state,
            config_path: ctx
                .state
                .config_path
                .as_ref()
                .map(|p| p.display().to_string()),
            last_reload_error: ctx
                .state
                .last_reload_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            sandbox: ctx.state.sandbox.clone(),
            recovered: ctx.info.recovered.clone(),
        })
    })
    .expect("unique method name");
    m.register_method(names::DAEMON_SHUTDOWN, |p, ctx, _| -> RpcResult<_> {
        parse::<params::NoParams>(&p)?;
        ctx.control
            .try_send(Control::Shutdown)
            .map_err(|_| ErrorObjectOwned::from(SupervisorError::ShuttingDown))?;
        Ok(ShutdownResult { ok: true })
    })
    .expect("unique method name");
    m.register_async_method(names::DAEMON_RELOAD, |p, ctx, _| async move {
        parse::<params::NoParams>(&p)?;
        let (tx, rx) = oneshot::channel();
        ctx.control
            .send(Control::Reload(tx))
            .await
            .map_err(|_| ErrorObjectOwned::from(SupervisorError::ShuttingDown))?;
        match rx.await {
            Ok(Ok(report)) => RpcResult::Ok(ReloadResult::from(report)),
            Ok(Err(e)) => Err(ErrorObject::owned(
                codes::RELOAD_FAILED,
                format!("config reload failed, previous config kept: {e}"),
                None::<()>,
            )),
            Err(_) => Err(SupervisorError::ShuttingDown.into()),
        }
    })
    .expect("unique method name");
    m.register_async_method(names::HOST_START, |p, ctx, _| async move {
        let p: params::StartParams = parse(&p)?;
        ctx.supervisor
            .start_and_wait(&p.extension_id, &p.options, p.wait_ready)
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method(names::HOST_REQUEST, |p, ctx, ext| async move {
        let p: params::RelayParams = parse(&p)?;
        bounded_ms("timeoutMs", p.timeout_ms)?;
        let timeout =
            Duration::from_millis(p.timeout_ms.unwrap_or(params::REQUEST_TIMEOUT_DEFAULT_MS));
        let payload = p.payload.unwrap_or_else(empty_object);
        let partial = partial_sink(&ext, &p.extension_id, &p.kind);
        ctx.supervisor
            .request(&p.extension_id, &p.kind, payload, timeout, partial)
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method(names::HOST_SEND, |p, ctx, _| async move {
        let p: params::RelayParams = parse(&p)?;
        if p.timeout_ms.is_some() {
            return Err(invalid_params(
                "timeoutMs",
                &format!("{} does not wait for a reply", names::HOST_SEND),
            ));
        }
        let payload = p.payload.unwrap_or_else(empty_object);
        ctx.supervisor
            .send(&p.extension_id, &p.kind, payload)
            .await?;
        RpcResult::Ok(SentResult { sent: true })
    })
    .expect("unique method name");
    m.register_async_method(names::HOST_RESPOND, |p, ctx, _| async move {
        let p: params::RespondParams = parse(&p)?;
        let result = match (p.payload, p.error) {
            (Some(payload), None) => Ok(payload),
            (None, Some(e)) => Err(e),
            _ => {
                return Err(invalid_params(
                    "payload",
                    "give exactly one of payload and error",
                ));
            }
        };
        ctx.supervisor
            .respond(&p.extension_id, &p.id, result)
            .await?;
        RpcResult::Ok(DeliveredResult { delivered: true })
    })
    .expect("unique method name");
    m.register_async_method(names::HOST_SUBSCRIBE_MESSAGES, subscribe_messages)
        .expect("unique method name");
    m.register_async_method(names::HOST_STOP, |p, ctx, _| async move {
        let p: params::StopParams = parse(&p)?;
        bounded_ms("timeoutMs", p.timeout_ms)?;
        ctx.supervisor
            .stop(&p.extension_id, p.timeout_ms.map(Duration::from_millis))
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method(names::HOST_RESTART, |p, ctx, _| async move {
        let p: params::IdParams = parse(&p)?;
        ctx.supervisor
            .restart(&p.extension_id)
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_method(names::HOST_STATUS, |p, ctx, _| -> RpcResult<_> {
        let p: params::IdParams = parse(&p)?;
        Ok(ctx.supervisor.status(&p.extension_id)?)
    })
    .expect("unique method name");
    m.register_async_method(names::HOST_USAGE, |p, ctx, _| async move {
        let p: params::IdParams = parse(&p)?;
        RpcResult::Ok(ctx.supervisor.usage(&p.extension_id).await?)
    })
    .expect("unique method name");
    m.register_method(names::HOST_LIST, |p, ctx, _| -> RpcResult<_> {
        parse::<params::NoParams>(&p)?;
        Ok(HostList {
            hosts: ctx.supervisor.list(),
        })
    })
    .expect("unique method name");
    m.register_async_method(names::HOST_REMOVE, |p, ctx, _| async move {
        let p: params::IdParams = parse(&p)?;
        ctx.supervisor.remove(&p.extension_id).await?;
        RpcResult::Ok(RemovedResult { removed: true })
    })
    .expect("unique method name");
    m.register_method(names::HOST_LOGS, |p, ctx, _| -> RpcResult<_> {
        let p: params::LogsParams = parse(&p)?;
        let n = p.lines.unwrap_or(params::LOG_LINES_DEFAULT);
        if n > params::LOG_LINES_MAX {
            return Err(invalid_params(
                "lines",
                &format!("must be at most {}", params::LOG_LINES_MAX),
            ));
        }
        Ok(LogsResult {
            lines: ctx.supervisor.logs(&p.extension_id, n)?,
        })
    })
    .expect("unique method name");
    m.register_async_method(names::HOST_SUBSCRIBE, subscribe)
        .expect("unique method name");
    m.register_async_method(names::HOST_SUBSCRIBE_LOGS, subscribe_logs)
        .expect("unique method name");
    m.register_method(names::HOST_UNSUBSCRIBE, |p, _, ext| unsubscribe(p, ext))
        .expect("unique method name");
    m
}

/// What each method takes from its connection; every other one takes
/// nothing.
///
/// `host.subscribeMessages` gets the connection but is not an
/// [`Access::Subscribe`]: as before this table existed, it is allowed in a
/// batch and runs as a notification.
pub const ACCESS: [(&str, Access); 5] = [
    (names::HOST_SUBSCRIBE, Access::Subscribe),
    (names::HOST_SUBSCRIBE_LOGS, Access::Subscribe),
    (names::HOST_SUBSCRIBE_MESSAGES, Access::Connection),
    (names::HOST_UNSUBSCRIBE, Access::Connection),
    // For `host.partial` notifications about this call.
    (names::HOST_REQUEST, Access::ConnectionAndCallId),
];

impl From<RpcModule<RpcContext>> for MethodTable {
    fn from(module: RpcModule<RpcContext>) -> Self {
        MethodTable::new(module, ACCESS)
    }
}

/// `host.subscribe`: a snapshot of the matching hosts, then every event, until
/// the client unsubscribes, disconnects or falls too far behind.
async fn subscribe(
    p: jsonrpsee_types::Params<'static>,
    ctx: Arc<RpcContext>,
    ext: jsonrpsee::Extensions,
) -> ResponsePayload<'static, u64> {
    let filter = match parse::<params::SubscribeParams>(&p) {
        Ok(p) => p
            .extension_ids
            .map(|ids| ids.into_iter().collect::<HashSet<_>>()),
        Err(e) => return ResponsePayload::error(e),
    };
    // Taken before the reply, so no event between the two is lost.
    let sub = ctx.supervisor.subscribe(&filter);
    let supervisor = ctx.supervisor.clone();
    subscriptions::start(
        ext.get::<Arc<Connection>>().cloned(),
        subscriptions::Feed {
            method: names::HOST_STATE_CHANGED,
            initial: Box::new(sub.snapshot.into_iter().map(|s| subscriptions::to_raw(&s))),
            rx: sub.events,
            render: move |ev: &BusEvent| {
                filter_matches(&filter, &ev.extension_id).then(|| ev.json.clone())
            },
            lagged: move |missed| {
                subscriptions::to_raw(&events::lagged(supervisor.current_seq(), missed))
            },
        },
    )
}

/// `host.subscribeLogs`: the newest `lines` output lines of one host, then
/// every new one, as `host.log` notifications.
async fn subscribe_logs(
    p: jsonrpsee_types::Params<'static>,
    ctx: Arc<RpcContext>,
    ext: jsonrpsee::Extensions,
) -> ResponsePayload<'static, u64> {
    let p: params::LogsParams = match parse(&p) {
        Ok(p) => p,
        Err(e) => return ResponsePayload::error(e),
    };
    let n = p.lines.unwrap_or(0).min(params::LOG_LINES_MAX);
    let (tail, rx) = match ctx.supervisor.follow_logs(&p.extension_id, n) {
        Ok(f) => f,
        Err(e) => return ResponsePayload::error(ErrorObjectOwned::from(e)),
    };
    let id: Arc<str> = p.extension_id.into();
    let render = {
        let id = id.clone();
        move |l: &LogLine| Some(subscriptions::to_raw(&LogEvent::line(&id, l)))
    };
    subscriptions::start(
        ext.get::<Arc<Connection>>().cloned(),
        subscriptions::Feed {
            method: names::HOST_LOG,
            initial: Box::new({
                let render = render.clone();
                tail.into_iter().filter_map(move |l| render(&l))
            }),
            rx,
            render,
            lagged: move |missed| subscriptions::to_raw(&LogEvent::lagged(&id, missed)),
        },
    )
}

/// `host.subscribeMessages`: host-originated requests as `host.message`
/// notifications, answered with `host.respond`.
async fn subscribe_messages(
    p: jsonrpsee_types::Params<'static>,
    ctx: Arc<RpcContext>,
    ext: jsonrpsee::Extensions,
) -> ResponsePayload<'static, u64> {
    let filter = match parse::<params::SubscribeParams>(&p) {
        Ok(p) => crate::supervisor::messages::filter_of(p.extension_ids),
        Err(e) => return ResponsePayload::error(e),
    };
    let crate::supervisor::messages::Attachment {
        attached,
        backlog,
        rx,
    } = ctx.supervisor.subscribe_messages(filter.clone());
    subscriptions::start(
        ext.get::<Arc<Connection>>().cloned(),
        subscriptions::Feed {
            method: names::HOST_MESSAGE,
            // Requests that waited for an editor: this one is the first.
            initial: Box::new(backlog.into_iter()),
            rx,
            render: move |m: &HubMessage| {
                let _keep_attached = &attached;
                filter_matches(&filter, &m.extension_id).then(|| m.json.clone())
            },
            lagged: |missed| subscriptions::to_raw(&Lagged { lagged: missed }),
        },
    )
}

/// Forwards a relayed request's `<type>-partial` replies to the calling
/// connection as `host.partial` notifications (dropped, and counted, when
/// that connection's queue is full: the reader must never wait on a client).
fn partial_sink(
    ext: &jsonrpsee::Extensions,
    extension_id: &str,
    kind: &str,
) -> Option<crate::ipc::PartialSink> {
    let conn = ext.get::<Arc<Connection>>()?.clone();
    let call = ext.get::<CallId>()?.0.clone();
    let request_id = serde_json::value::to_raw_value(&call).ok()?;
    let extension_id = extension_id.to_string();
    let kind = format!("{kind}-partial");
    Some(Box::new(move |payload| {
        let note = subscriptions::to_raw(&json!({
            "jsonrpc": "2.0",
            "method": names::HOST_PARTIAL,
            "params": Partial {
                request_id: &request_id,
                extension_id: &extension_id,
                kind: &kind,
                payload: &payload,
            },
        }));
        conn.try_send(note)
    }))
}

fn empty_object() -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string("{}".into()).expect("JSON")
}

/// `host.unsubscribe [id]`: whether the subscription was active.
fn unsubscribe(p: jsonrpsee_types::Params<'_>, ext: &jsonrpsee::Extensions) -> RpcResult<bool> {
    let (id,): (u64,) = p
        .parse()
        .map_err(|_| invalid_params("", "expected [subscriptionId]"))?;
    Ok(ext
        .get::<Arc<Connection>>()
        .is_some_and(|c| c.cancel_subscription(id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn module() -> RpcModule<RpcContext> {
        let dir = tempfile::tempdir().unwrap();
        let (control, _rx) = mpsc::channel(1);
        build_module(RpcContext {
            supervisor: Supervisor::new(crate::supervisor::SupervisorConfig::new(
                dir.path().into(),
            )),
            info: DaemonInfo {
                pid: 1,
                started_at: SystemTime::now(),
                started: Instant::now(),
                socket: "/x".into(),
                recovered: Vec::new(),
            },
            control,
            state: Arc::default(),
        })
    }

    #[test]
    fn openrpc_document_lists_exactly_the_registered_methods() {
        let doc: serde_json::Value = serde_json::from_str(OPENRPC).unwrap();
        assert!(doc["openrpc"].as_str().unwrap().starts_with("1."));
        let documented: BTreeSet<String> = doc["methods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect();
        let registered: BTreeSet<String> = module().method_names().map(String::from).collect();
        let missing: Vec<_> = registered.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&registered).collect();
        assert!(
            missing.is_empty(),
            "registered but not in openrpc.json: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "in openrpc.json but not registered: {extra:?}"
        );
    }

    #[test]
    fn every_method_is_named_in_the_protocol() {
        let named: BTreeSet<&str> = names::METHODS.iter().copied().collect();
        let registered: BTreeSet<&str> = module().method_names().collect();
        assert_eq!(named, registered);
        assert_eq!(named.len(), names::METHODS.len(), "a name listed twice");
        for (name, _) in ACCESS {
            assert!(named.contains(name), "{name}");
        }
    }

    #[test]
    fn every_documented_error_ref_exists() {
        let doc: serde_json::Value = serde_json::from_str(OPENRPC).unwrap();
        let errors = doc["components"]["errors"].as_object().unwrap();
        for m in doc["methods"].as_array().unwrap() {
            for e in m["errors"].as_array().into_iter().flatten() {
                let r = e["$ref"].as_str().unwrap();
                let name = r.rsplit('/').next().unwrap();
                assert!(errors.contains_key(name), "{}: {r}", m["name"]);
            }
        }
    }
}
