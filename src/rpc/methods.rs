//! Every control method, registered on a jsonrpsee [`RpcModule`].
//!
//! Handlers parse params, call the supervisor (which only sends messages to
//! host actors) and map [`SupervisorError`] to a JSON-RPC error.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use jsonrpsee::{ResponsePayload, RpcModule};
use jsonrpsee_types::{ErrorObject, ErrorObjectOwned};
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::{Notify, broadcast, oneshot};

use super::codes;
use super::params::{self, invalid_params};
use super::transport::Connection;
use crate::supervisor::events::{Filter, StateEvent, Subscription, filter_matches};
use crate::supervisor::{StartRequest, Supervisor, SupervisorError};

/// The subscription methods and their notification.
pub const SUBSCRIBE: &str = "host.subscribe";
pub const UNSUBSCRIBE: &str = "host.unsubscribe";
pub const STATE_CHANGED: &str = "host.stateChanged";

/// Facts about this daemon for `daemon.info`.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub pid: u32,
    pub started_at: SystemTime,
    pub started: Instant,
    pub socket: PathBuf,
}

/// What every handler can reach.
pub struct RpcContext {
    pub supervisor: Arc<Supervisor>,
    pub info: DaemonInfo,
    /// Notified by `daemon.shutdown`.
    pub shutdown: Arc<Notify>,
}

impl From<SupervisorError> for ErrorObjectOwned {
    fn from(e: SupervisorError) -> Self {
        let msg = e.to_string();
        match e {
            SupervisorError::UnknownHost(id) => {
                ErrorObject::owned(codes::UNKNOWN_HOST, msg, Some(json!({ "extensionId": id })))
            }
            SupervisorError::InvalidTransition {
                extension_id,
                state,
            } => ErrorObject::owned(
                codes::INVALID_TRANSITION,
                msg,
                Some(json!({ "extensionId": extension_id, "state": state })),
            ),
            SupervisorError::Spawn {
                extension_id,
                source,
            } => ErrorObject::owned(
                codes::SPAWN_FAILED,
                msg,
                Some(json!({ "extensionId": extension_id, "path": source.path() })),
            ),
            SupervisorError::InvalidSpec { field, reason } => invalid_params(field, &reason),
            SupervisorError::ShuttingDown => {
                ErrorObject::owned(codes::SHUTTING_DOWN, msg, None::<()>)
            }
        }
    }
}

type RpcResult<T> = Result<T, ErrorObjectOwned>;

#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Info {
    version: &'static str,
    protocol_version: u32,
    pid: u32,
    started_at: String,
    uptime_ms: u64,
    socket: String,
    hosts: usize,
    hosts_by_state: BTreeMap<&'static str, usize>,
}

#[derive(Clone, Serialize)]
struct HostList {
    hosts: Vec<crate::supervisor::HostStatus>,
}

#[derive(Clone, Serialize)]
struct Logs {
    lines: Vec<crate::supervisor::logs::LogLine>,
}

fn ms(v: Option<u64>) -> Option<Duration> {
    v.map(Duration::from_millis)
}

fn start_request(p: params::StartParams) -> StartRequest {
    let r = p.restart.unwrap_or_default();
    StartRequest {
        extension_id: p.extension_id,
        entry: p.entry,
        args: p.args,
        env: p.env,
        cwd: p.cwd,
        max_attempts: r.max_attempts,
        backoff: ms(r.backoff_ms),
        max_backoff: ms(r.max_backoff_ms),
        stable_after: ms(r.stable_after_ms),
        stop_timeout: ms(p.stop_timeout_ms),
    }
}

/// Register every method of the control protocol.
pub fn build_module(ctx: RpcContext) -> RpcModule<RpcContext> {
    let mut m = RpcModule::new(ctx);
    m.register_method("daemon.info", |p, ctx, _| -> RpcResult<Info> {
        params::parse::<params::NoParams>(&p)?;
        let hosts = ctx.supervisor.list();
        let mut by_state = BTreeMap::new();
        for h in &hosts {
            *by_state.entry(h.state.as_str()).or_insert(0) += 1;
        }
        Ok(Info {
            version: env!("CARGO_PKG_VERSION"),
            protocol_version: 1,
            pid: ctx.info.pid,
            started_at: crate::time::rfc3339(ctx.info.started_at),
            uptime_ms: crate::time::millis(ctx.info.started.elapsed()),
            socket: ctx.info.socket.display().to_string(),
            hosts: hosts.len(),
            hosts_by_state: by_state,
        })
    })
    .expect("unique method name");
    m.register_method("daemon.shutdown", |p, ctx, _| -> RpcResult<_> {
        params::parse::<params::NoParams>(&p)?;
        ctx.shutdown.notify_one();
        Ok(json!({ "ok": true }))
    })
    .expect("unique method name");
    m.register_async_method("host.start", |p, ctx, _| async move {
        let req = start_request(params::parse(&p)?);
        ctx.supervisor
            .start(req)
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method("host.stop", |p, ctx, _| async move {
        let p: params::StopParams = params::parse(&p)?;
        ctx.supervisor
            .stop(&p.extension_id, ms(p.timeout_ms))
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_async_method("host.restart", |p, ctx, _| async move {
        let p: params::IdParams = params::parse(&p)?;
        ctx.supervisor
            .restart(&p.extension_id)
            .await
            .map_err(ErrorObjectOwned::from)
    })
    .expect("unique method name");
    m.register_method("host.status", |p, ctx, _| -> RpcResult<_> {
        let p: params::IdParams = params::parse(&p)?;
        Ok(ctx.supervisor.status(&p.extension_id)?)
    })
    .expect("unique method name");
    m.register_method("host.list", |p, ctx, _| -> RpcResult<_> {
        params::parse::<params::NoParams>(&p)?;
        Ok(HostList {
            hosts: ctx.supervisor.list(),
        })
    })
    .expect("unique method name");
    m.register_async_method("host.remove", |p, ctx, _| async move {
        let p: params::IdParams = params::parse(&p)?;
        ctx.supervisor.remove(&p.extension_id).await?;
        RpcResult::Ok(json!({ "removed": true }))
    })
    .expect("unique method name");
    m.register_method("host.logs", |p, ctx, _| -> RpcResult<_> {
        let p: params::LogsParams = params::parse(&p)?;
        let n = p.lines.unwrap_or(params::LOG_LINES_DEFAULT);
        if n > params::LOG_LINES_MAX {
            return Err(invalid_params(
                "lines",
                &format!("must be at most {}", params::LOG_LINES_MAX),
            ));
        }
        Ok(Logs {
            lines: ctx.supervisor.logs(&p.extension_id, n)?,
        })
    })
    .expect("unique method name");
    m.register_async_method(SUBSCRIBE, subscribe)
        .expect("unique method name");
    m.register_method(UNSUBSCRIBE, |p, _, ext| unsubscribe(p, ext))
        .expect("unique method name");
    m
}

/// `host.subscribe`: a snapshot of the matching hosts, then every event, until
/// the client unsubscribes, disconnects or falls too far behind.
///
/// The subscription is registered on the connection before the reply is
/// returned (so an immediate `host.unsubscribe` finds it), and its first
/// notification is queued only after the reply.
async fn subscribe(
    p: jsonrpsee_types::Params<'static>,
    ctx: Arc<RpcContext>,
    ext: jsonrpsee::Extensions,
) -> ResponsePayload<'static, u64> {
    let filter = match params::parse::<params::SubscribeParams>(&p) {
        Ok(p) => p
            .extension_ids
            .map(|ids| ids.into_iter().collect::<HashSet<_>>()),
        Err(e) => return ResponsePayload::error(e),
    };
    let Some(conn) = ext.get::<Arc<Connection>>().cloned() else {
        return ResponsePayload::error(ErrorObject::owned(
            jsonrpsee_types::error::INTERNAL_ERROR_CODE,
            "subscriptions need a connection",
            None::<()>,
        ));
    };
    let Some((sub_id, cancelled)) = conn.add_subscription() else {
        return ResponsePayload::error(ErrorObject::owned(
            codes::TOO_MANY_SUBSCRIPTIONS,
            "too many subscriptions on this connection",
            None::<()>,
        ));
    };
    // Taken before the reply, so no event between the two is lost.
    let sub = ctx.supervisor.subscribe(&filter);
    let (payload, replied) = ResponsePayload::success(sub_id).notify_on_completion();
    tokio::spawn(async move {
        if replied.await.is_ok() {
            forward(&conn, sub_id, sub, &filter, cancelled).await;
        }
        conn.remove_subscription(sub_id);
    });
    payload
}

fn notification(sub_id: u64, event: &RawValue) -> Box<RawValue> {
    let text = format!(
        r#"{{"jsonrpc":"2.0","method":"{STATE_CHANGED}","params":{{"subscription":{sub_id},"result":{}}}}}"#,
        event.get()
    );
    RawValue::from_string(text).expect("valid JSON by construction")
}

async fn forward(
    conn: &Connection,
    sub_id: u64,
    sub: Subscription,
    filter: &Filter,
    mut cancelled: oneshot::Receiver<()>,
) {
    let raw = |e: &StateEvent| serde_json::value::to_raw_value(e).expect("events serialize");
    let mut last_seq = 0;
    for event in &sub.snapshot {
        last_seq = event.seq;
        if conn.send(notification(sub_id, &raw(event))).await.is_err() {
            return;
        }
    }
    let mut events = sub.events;
    loop {
        let r = tokio::select! {
            _ = &mut cancelled => return,
            () = conn.closed() => return,
            r = events.recv() => r,
        };
        match r {
            Ok(ev) => {
                last_seq = ev.seq;
                if filter_matches(filter, &ev.extension_id)
                    && conn.send(notification(sub_id, &ev.json)).await.is_err()
                {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    subscription = sub_id,
                    missed,
                    "subscriber lagged; ending its subscription"
                );
                let _ = conn
                    .send(notification(
                        sub_id,
                        &raw(&StateEvent::lagged(last_seq, missed)),
                    ))
                    .await;
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
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
