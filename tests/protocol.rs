//! Wire-format and protocol-error cases, byte for byte, against a real daemon.

// Drives real processes with Unix signals, sockets and /proc.
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

async fn raw(d: &Daemon) -> RawConn {
    RawConn::connect(&d.socket).await
}

fn code(v: &Value) -> i64 {
    v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_errors() {
    timed(async {
        let d = Daemon::start();
        let mut c = raw(&d).await;

        c.send(b"{bad\n").await;
        let v = c.line().await;
        assert_eq!((code(&v), &v["id"]), (-32700, &Value::Null));

        c.send(b"[]\n").await;
        let v = c.line().await;
        assert_eq!((code(&v), &v["id"]), (-32600, &Value::Null));

        c.send(br#"{"jsonrpc":"1.0","id":7,"method":"daemon.info"}"#).await;
        c.send(b"\n").await;
        let v = c.line().await;
        assert_eq!((code(&v), &v["id"]), (-32600, &json!(7)));

        c.send(b"{\"jsonrpc\":\"2.0\",\"id\":\"s1\",\"method\":\"no.such\"}\n").await;
        let v = c.line().await;
        assert_eq!((code(&v), &v["id"]), (-32601, &json!("s1")));

        c.send(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"host.status\",\"params\":{}}\n").await;
        let v = c.line().await;
        assert_eq!(code(&v), -32602);
        assert!(v["error"]["message"].as_str().unwrap().contains("extensionId"), "{v}");

        c.send(b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"host.status\",\"params\":{\"extensionId\":[]}}\n").await;
        let v = c.line().await;
        assert_eq!(code(&v), -32602);
        assert_eq!(v["error"]["data"]["field"], "extensionId");

        c.send(b"42\n").await;
        assert_eq!(code(&c.line().await), -32600);

        c.send(b"{\"jsonrpc\":\"2.0\",\"id\":{\"a\":1},\"method\":\"daemon.info\"}\n").await;
        let v = c.line().await;
        assert_eq!((code(&v), &v["id"]), (-32600, &Value::Null));

        c.send(b"\xff\xfe{}\n").await;
        assert_eq!(code(&c.line().await), -32700, "invalid UTF-8");

        c.send(b"{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"host.logs\",\"params\":{\"extensionId\":\"a\",\"lines\":1e999999}}\n").await;
        let v = c.line().await;
        assert_eq!(code(&v), -32602, "huge number");
        assert_eq!(v["error"]["data"]["field"], "lines");
        c.send(b"{\"jsonrpc\":\"2.0\",\"id\":123456789012345678901234567890,\"method\":\"daemon.info\"}\n").await;
        assert_eq!(code(&c.line().await), -32600, "huge id");

        let deep = format!("{}\n", "[".repeat(100_000));
        c.send(deep.as_bytes()).await;
        assert_eq!(code(&c.line().await), -32700, "deep nesting");

        // Empty lines are ignored; the connection still works.
        c.send(b"\n\r\n  \n{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"daemon.info\"}\n").await;
        let v = c.line().await;
        assert_eq!(v["id"], 5);
        assert_eq!(v["result"]["protocolVersion"], 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_get_no_reply() {
    timed(async {
        let d = Daemon::start();
        let mut c = raw(&d).await;
        c.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"daemon.info\"}\n")
            .await;
        c.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"no.such\"}\n")
            .await;
        c.send(b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"daemon.info\"}\n")
            .await;
        let v = c.line().await;
        assert_eq!(v["id"], 9, "the notifications were answered: {v}");
        // An explicit null id is a request and is answered.
        c.send(b"{\"jsonrpc\":\"2.0\",\"id\":null,\"method\":\"daemon.info\"}\n")
            .await;
        let v = c.line().await;
        assert_eq!(v["id"], Value::Null);
        assert!(v["result"].is_object());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches() {
    timed(async {
        let d = Daemon::start();
        let mut c = raw(&d).await;
        c.send(
            br#"[{"jsonrpc":"2.0","id":1,"method":"daemon.info"},{"jsonrpc":"2.0","id":2,"method":"host.status","params":{"extensionId":"x"}},{"jsonrpc":"2.0","method":"daemon.info"},{"jsonrpc":"2.0","id":3,"method":"host.subscribe"},5]"#,
        )
        .await;
        c.send(b"\n").await;
        let v = c.line().await;
        let arr = v.as_array().expect("a batch reply is an array");
        assert_eq!(arr.len(), 4, "{v}");
        let by_id = |id: Value| arr.iter().find(|r| r["id"] == id).cloned().unwrap();
        assert!(by_id(json!(1))["result"].is_object());
        assert_eq!(code(&by_id(json!(2))), -32001);
        assert_eq!(code(&by_id(json!(3))), -32600, "subscribe in a batch");
        assert_eq!(code(&by_id(Value::Null)), -32600, "non-object member");
        // A batch of notifications only: no reply at all.
        c.send(b"[{\"jsonrpc\":\"2.0\",\"method\":\"daemon.info\"}]\n{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"daemon.info\"}\n").await;
        assert_eq!(c.line().await["id"], 8);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_line_is_refused_and_the_connection_keeps_working() {
    timed(async {
        let d = Daemon::start();
        let mut c = raw(&d).await;
        let mut big = Vec::with_capacity(5 * 1024 * 1024 + 100);
        big.extend_from_slice(
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"daemon.info\",\"params\":{\"pad\":\"",
        );
        big.resize(5 * 1024 * 1024, b'a');
        big.extend_from_slice(b"\"}}\n{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"daemon.info\"}\n");
        c.send(&big).await;
        let v = c.line().await;
        assert_eq!(v["id"], Value::Null);
        assert_eq!(code(&v), -32600);
        assert_eq!(v["error"]["message"], "request too large");
        let v = c.line().await;
        assert_eq!(v["id"], 2);
        assert!(v["result"].is_object());
    })
    .await;
}

fn vm_hwm_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_line_without_newline_keeps_memory_bounded() {
    timed(async {
        let d = Daemon::start();
        let mut c = raw(&d).await;
        let chunk = vec![b'x'; 1024 * 1024];
        for _ in 0..100 {
            c.send(&chunk).await;
        }
        c.send(b"\n{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"daemon.info\"}\n")
            .await;
        let v = c.line().await;
        assert_eq!(v["error"]["message"], "request too large");
        assert_eq!(c.line().await["id"], 2);
        let peak = vm_hwm_kib(d.pid());
        assert!(
            peak < 48 * 1024,
            "daemon peak RSS {peak} KiB after a 100 MB line"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_request_without_newline_is_answered_at_half_close() {
    timed(async {
        let d = Daemon::start();
        let mut c = raw(&d).await;
        c.send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"daemon.info\"}")
            .await;
        c.stream.get_mut().shutdown().await.unwrap();
        let v = c.line().await;
        assert_eq!(v["id"], 1);
        assert!(
            c.closed_within(Duration::from_secs(5)).await,
            "daemon kept the connection open"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_with_one_error_line() {
    timed(async {
        let d = Daemon::start_with(DaemonOpts {
            config: Some("max_connections = 2\n".into()),
            ..Default::default()
        });
        let mut a = d.client().await;
        let mut b = d.client().await;
        a.ok("daemon.info", json!({})).await;
        b.ok("daemon.info", json!({})).await;
        let mut third = raw(&d).await;
        let v = third.line().await;
        assert_eq!(code(&v), -32000);
        assert_eq!(v["error"]["message"], "too many connections");
        assert_eq!(v["id"], Value::Null);
        assert!(third.closed_within(Duration::from_secs(5)).await);
        // Freeing a slot lets the next one in.
        drop(a);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut c = raw(&d).await;
            c.try_send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"daemon.info\"}\n")
                .await;
            let v = c.line().await;
            if v["id"] == 1 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "slot never freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        b.ok("daemon.info", json!({})).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_and_daemon_info() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let sub = c.ok("host.subscribe", json!({})).await;
        assert_eq!(c.ok("host.unsubscribe", json!([sub])).await, json!(true));
        assert_eq!(c.ok("host.unsubscribe", json!([sub])).await, json!(false));
        let info = c.ok("daemon.info", json!({})).await;
        assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(info["pid"], d.pid());
        assert_eq!(info["socket"], d.socket.to_str().unwrap());
        assert_eq!(info["hosts"], 0);
        assert!(info["startedAt"].as_str().unwrap().ends_with('Z'));
        assert!(info["uptimeMs"].is_u64());
        // rpc.discover: the OpenRPC document, on one line like everything else.
        let mut raw_conn = raw(&d).await;
        raw_conn
            .send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"rpc.discover\"}\n")
            .await;
        let doc = raw_conn.line().await;
        assert!(doc["result"]["openrpc"].as_str().unwrap().starts_with("1."));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_closes_its_side_is_released() {
    timed(async {
        let d = Daemon::start_with(DaemonOpts {
            config: Some("max_connections = 4\n".into()),
            ..Default::default()
        });
        // Far more subscribe-and-close clients than connection slots.
        for _ in 0..40 {
            let mut c = raw(&d).await;
            c.send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"host.subscribe\"}\n")
                .await;
            c.stream.get_mut().shutdown().await.unwrap();
            assert_eq!(c.line().await["id"], 1);
            assert!(
                c.closed_within(Duration::from_secs(5)).await,
                "connection kept open after EOF"
            );
        }
        d.client().await.ok("daemon.info", json!({})).await;
    })
    .await;
}
