//! Subscriptions over one connection: registered before the subscribe reply,
//! notifications queued only after it, ended by `host.unsubscribe`, by the
//! connection closing, or (after one final notice) by lagging.

use std::sync::Arc;

use jsonrpsee::ResponsePayload;
use jsonrpsee_types::ErrorObject;
use serde_json::value::RawValue;
use tokio::sync::broadcast;

use super::connection::Connection;
use crate::protocol::codes;

/// `{"jsonrpc":"2.0","method":M,"params":{"subscription":ID,"result":R}}`.
pub fn notification(method: &str, sub_id: u64, result: &RawValue) -> Box<RawValue> {
    let text = format!(
        r#"{{"jsonrpc":"2.0","method":"{method}","params":{{"subscription":{sub_id},"result":{}}}}}"#,
        result.get()
    );
    RawValue::from_string(text).expect("valid JSON by construction")
}

pub fn to_raw<T: serde::Serialize>(v: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(v).expect("notifications serialize")
}

/// A stream to deliver as notifications of `method`.
pub struct Feed<T, R, L> {
    pub method: &'static str,
    /// Sent first (snapshot, log tail).
    /// Rendered one at a time as the connection takes them, so a long log
    /// tail is never copied whole for a client that reads slowly.
    pub initial: Box<dyn Iterator<Item = Box<RawValue>> + Send>,
    pub rx: broadcast::Receiver<Arc<T>>,
    /// The result of one notification; `None` skips the item.
    pub render: R,
    /// The result of the final notice for a subscriber `missed` items behind.
    pub lagged: L,
}

/// Register a subscription on `conn` and start delivering `feed` once the
/// reply (the subscription id) has been queued.
pub fn start<T, R, L>(
    conn: Option<Arc<Connection>>,
    feed: Feed<T, R, L>,
) -> ResponsePayload<'static, u64>
where
    T: Send + Sync + 'static,
    R: Fn(&T) -> Option<Box<RawValue>> + Send + Sync + 'static,
    L: FnOnce(u64) -> Box<RawValue> + Send + 'static,
{
    let Some(conn) = conn else {
        return ResponsePayload::error(ErrorObject::owned(
            jsonrpsee_types::error::INTERNAL_ERROR_CODE,
            "subscriptions need a connection",
            None::<()>,
        ));
    };
    let Some((sub_id, mut cancelled)) = conn.add_subscription() else {
        return ResponsePayload::error(ErrorObject::owned(
            codes::TOO_MANY_SUBSCRIPTIONS,
            "too many subscriptions on this connection",
            None::<()>,
        ));
    };
    let (payload, replied) = ResponsePayload::success(sub_id).notify_on_completion();
    tokio::spawn(async move {
        let method = feed.method;
        let send = |r: &RawValue| conn.send(notification(method, sub_id, r));
        let run = async {
            replied.await.map_err(|_| ())?;
            for item in feed.initial {
                send(&item).await?;
            }
            let mut rx = feed.rx;
            loop {
                let item = tokio::select! {
                    _ = &mut cancelled => return Ok(()),
                    () = conn.closed() => return Err(()),
                    r = rx.recv() => r,
                };
                match item {
                    Ok(item) => {
                        if let Some(r) = (feed.render)(&item) {
                            send(&r).await?;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(
                            subscription = sub_id,
                            method,
                            missed,
                            "subscriber lagged; ending its subscription"
                        );
                        let _ = send(&(feed.lagged)(missed)).await;
                        return Ok(());
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        };
        let _: Result<(), ()> = run.await;
        conn.remove_subscription(sub_id);
    });
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_shape() {
        let r = to_raw(&serde_json::json!({"a": 1}));
        let n = notification(crate::protocol::names::HOST_LOG, 7, &r);
        let v: serde_json::Value = serde_json::from_str(n.get()).unwrap();
        assert_eq!(v["method"], crate::protocol::names::HOST_LOG);
        assert_eq!(v["params"]["subscription"], 7);
        assert_eq!(v["params"]["result"]["a"], 1);
        assert!(!n.get().contains('\n'));
    }
}
