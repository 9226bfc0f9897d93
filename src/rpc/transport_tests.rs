//! Unit tests of the line transport's call placement: calls that wait are
//! polled by the connection's own task, concurrently, and never cancelled by
//! the connection closing.

use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::RpcModule;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, watch};

use super::{Limits, Presence, serve};
use crate::rpc::connection::MethodTable;

struct Gates {
    /// `wait` notifies this when it starts.
    started: Notify,
    /// `wait` returns once this is notified.
    open: Notify,
    /// `wait` notifies this when it is done.
    finished: Notify,
}

fn table(g: Arc<Gates>) -> MethodTable {
    let mut m = RpcModule::from_arc(g);
    m.register_async_method("wait", |_, g, _| async move {
        g.started.notify_one();
        g.open.notified().await;
        g.finished.notify_one();
        "waited"
    })
    .unwrap();
    m.register_method("open", |_, g, _| {
        g.open.notify_one();
        "opened"
    })
    .unwrap();
    MethodTable::new(m, [])
}

fn start(g: Arc<Gates>) -> (tokio::io::DuplexStream, watch::Sender<bool>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = Limits {
        max_message_bytes: 1 << 20,
        max_in_flight: 8,
        idle_timeout: None,
    };
    tokio::spawn(serve(
        server,
        table(g),
        1,
        limits,
        Arc::new(Presence::default()),
        stop_rx,
    ));
    (client, stop_tx)
}

fn gates() -> Arc<Gates> {
    Arc::new(Gates {
        started: Notify::new(),
        open: Notify::new(),
        finished: Notify::new(),
    })
}

#[tokio::test]
async fn a_waiting_call_does_not_hold_up_the_next_one() {
    let g = gates();
    let (client, _stop) = start(g);
    let (r, mut w) = tokio::io::split(client);
    let mut lines = BufReader::new(r).lines();
    // `wait` waits until `open`, which comes after it on the same
    // connection: both must be running at once.
    w.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"wait\"}\n{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"open\"}\n")
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        first.contains("\"id\":2") && first.contains("opened"),
        "{first}"
    );
    assert!(
        second.contains("\"id\":1") && second.contains("waited"),
        "{second}"
    );
}

#[tokio::test]
async fn a_call_outlives_its_connection() {
    let g = gates();
    let (mut client, _stop) = start(g.clone());
    client
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"wait\"}\n")
        .await
        .unwrap();
    client.flush().await.unwrap();
    // Let the transport read the line and park the call, then go away.
    tokio::time::timeout(Duration::from_secs(5), g.started.notified())
        .await
        .expect("the call started");
    drop(client);
    g.open.notify_one();
    tokio::time::timeout(Duration::from_secs(5), g.finished.notified())
        .await
        .expect("the call ran to its end after its connection closed");
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_the_connection_but_not_its_waiting_call() {
    let g = gates();
    let (client, stop) = start(g.clone());
    let (r, mut w) = tokio::io::split(client);
    let mut lines = BufReader::new(r).lines();
    w.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"wait\"}\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), g.started.notified())
        .await
        .expect("the call started");
    stop.send(true).unwrap();
    // The connection closes after its bounded wait for the call (no reply:
    // it has none yet) ...
    let end = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .expect("closed within the shutdown wait")
        .unwrap();
    assert_eq!(end, None);
    // ... and the call still runs to its end.
    g.open.notify_one();
    tokio::time::timeout(Duration::from_secs(5), g.finished.notified())
        .await
        .expect("the call ran to its end after the shutdown");
}
