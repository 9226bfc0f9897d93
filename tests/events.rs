//! State-change subscriptions: snapshot, ordering, filters, lag.

// Drives real processes with Unix signals, sockets and /proc.
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const S20: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscribers_see_identical_sequences() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        c.ok(
            "host.start",
            start_params(&d, "acme.before", "print-lines.js", &[]),
        )
        .await;

        let mut s1 = d.client().await;
        let mut s2 = d.client().await;
        let id1 = s1.ok("host.subscribe", json!({})).await;
        let id2 = s2.ok("host.subscribe", json!({})).await;
        assert_ne!(id1, id2);

        // Snapshot first: one per host, as of the current seq.
        for s in [&mut s1, &mut s2] {
            let snap = s.next_event(S20).await;
            assert_eq!(snap["kind"], "snapshot");
            assert_eq!(snap["extensionId"], "acme.before");
            assert_eq!(snap["to"], "running");
            assert_eq!(snap["from"], Value::Null);
            assert_eq!(snap["status"]["state"], "running");
        }

        c.ok(
            "host.start",
            start_params(&d, "acme.a", "print-lines.js", &[]),
        )
        .await;
        c.ok("host.restart", json!({"extensionId": "acme.a"})).await;
        c.ok("host.stop", json!({"extensionId": "acme.a"})).await;
        c.ok("host.stop", json!({"extensionId": "acme.before"}))
            .await;
        c.ok("host.remove", json!({"extensionId": "acme.a"})).await;

        let done = |e: &Value| e["kind"] == "removed";
        let e1 = s1.events_until(S20, done).await;
        let e2 = s2.events_until(S20, done).await;
        assert_eq!(e1, e2, "subscribers disagree");
        let seqs: Vec<u64> = e1.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert!(e1.len() >= 10, "{e1:?}");
        // Each event carries a consistent status.
        for e in &e1 {
            if e["kind"] == "transition" {
                assert_eq!(e["to"], e["status"]["state"], "{e}");
                assert_eq!(e["generation"], e["status"]["generation"]);
                assert_eq!(e["pid"], e["status"]["pid"]);
                assert!(
                    dscode_hostd::state::is_valid_edge(
                        serde_json::from_value(e["from"].clone()).unwrap(),
                        serde_json::from_value(e["to"].clone()).unwrap()
                    ),
                    "{e}"
                );
            }
        }
        let last = e1.last().unwrap();
        assert_eq!(last["extensionId"], "acme.a");
        assert_eq!(last["reason"], "removed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_by_extension_ids() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let mut s = d.client().await;
        s.ok("host.subscribe", json!({"extensionIds": ["acme.wanted"]}))
            .await;
        c.ok(
            "host.start",
            start_params(&d, "acme.other", "print-lines.js", &[]),
        )
        .await;
        c.ok(
            "host.start",
            start_params(&d, "acme.wanted", "print-lines.js", &[]),
        )
        .await;
        let events = s.events_until(S20, |e| e["to"] == "running").await;
        assert!(
            events.iter().all(|e| e["extensionId"] == "acme.wanted"),
            "{events:?}"
        );
        let e = s
            .err("host.subscribe", json!({"extensionIds": "acme.wanted"}))
            .await;
        assert_eq!(e.code, -32602);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_gets_lagged_and_others_lose_nothing() {
    timed(async {
        // Spawn failures are the cheapest transitions: start -> crashed.
        let d = Daemon::start_with(DaemonOpts {
            // The slow connection is idle once its subscription has
            // lagged; on a loaded machine the 1500 starts outlast the
            // default idle timeout, which would close it before it is read.
            config: Some("node = \"/nonexistent/node\"\nidle_timeout_ms = 600000\n".into()),
            ..Default::default()
        });
        let mut slow = RawConn::connect(&d.socket).await;
        slow.send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"host.subscribe\"}\n")
            .await;
        let mut fast = d.client().await;
        fast.ok("host.subscribe", json!({})).await;
        let mut c = d.client().await;
        const STARTS: usize = 1500;
        let reader = tokio::spawn(async move {
            let mut n = 0;
            while n < 2 * STARTS {
                let e = fast.next_event(S20).await;
                assert_eq!(e["kind"], "transition");
                n += 1;
            }
            fast
        });
        for _ in 0..STARTS {
            let e = c
                .err(
                    "host.start",
                    start_params(&d, "acme.fail", "print-lines.js", &[]),
                )
                .await;
            assert_eq!(e.code, -32003);
        }
        let _fast = reader.await.unwrap();
        // Now read the slow one: some events, then exactly one `lagged`.
        let first = slow.line().await;
        assert_eq!(first["id"], 1, "subscribe reply first: {first}");
        let mut lagged = None;
        for _ in 0..(2 * STARTS + 10) {
            let v = slow.line().await;
            let ev = &v["params"]["result"];
            if ev["kind"] == "lagged" {
                lagged = Some(ev.clone());
                break;
            }
        }
        let lagged = lagged.expect("no lagged event");
        assert!(lagged["missed"].as_u64().unwrap() > 0, "{lagged}");
        // The subscription has ended, the connection still works.
        slow.send(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"daemon.info\"}\n")
            .await;
        let v = slow.line().await;
        assert_eq!(v["id"], 2, "an event arrived after lagged: {v}");
    })
    .await;
}
