//! A storm of concurrent clients: the only errors are -32001/-32002, the final
//! states agree with the event stream, and no host process is left.

// Drives real processes with Unix signals, sockets and /proc.
#![cfg(unix)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const IDS: [&str; 4] = ["storm.a", "storm.b", "storm.c", "storm.d"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_two_hundred_random_calls_each() {
    timed(async {
        let d = Daemon::start();
        let mut watcher = d.client().await;
        watcher.ok("host.subscribe", json!({})).await;
        let mut tasks = Vec::new();
        for client in 0..8u64 {
            let mut c = d.client().await;
            let params: Vec<Value> = IDS
                .iter()
                .map(|id| {
                    let mut p = start_params(&d, id, "print-lines.js", &["1"]);
                    p["stopTimeoutMs"] = json!(2000);
                    p
                })
                .collect();
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (client + 1));
                let mut errors: HashMap<i64, usize> = HashMap::new();
                for _ in 0..200 {
                    let i = rng.below(IDS.len() as u64) as usize;
                    let id = IDS[i];
                    let r = match rng.below(4) {
                        0 => c.call("host.start", params[i].clone()).await,
                        1 => c.call("host.stop", json!({"extensionId": id})).await,
                        2 => c.call("host.restart", json!({"extensionId": id})).await,
                        _ => c.call("host.status", json!({"extensionId": id})).await,
                    };
                    if let Err(e) = r {
                        assert!(matches!(e.code, -32001 | -32002), "unexpected error {e:?}");
                        *errors.entry(e.code).or_default() += 1;
                    }
                }
                errors
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Quiesce: a sentinel transition after everything else.
        let mut c = d.client().await;
        c.ok(
            "host.start",
            start_params(&d, "storm.sentinel", "print-lines.js", &["1"]),
        )
        .await;
        let events = watcher
            .events_until(Duration::from_secs(30), |e| {
                e["extensionId"] == "storm.sentinel" && e["to"] == "running"
            })
            .await;
        eprintln!("storm: {} events", events.len());
        assert!(
            events.len() > 200,
            "the storm did little: {} events",
            events.len()
        );
        let mut last: HashMap<String, Value> = HashMap::new();
        let mut prev_seq = 0;
        for e in &events {
            let seq = e["seq"].as_u64().unwrap();
            assert!(seq > prev_seq, "seq not increasing");
            prev_seq = seq;
            let id = e["extensionId"].as_str().unwrap().to_string();
            if let Some(p) = last.get(&id) {
                assert_eq!(p["to"], e["from"], "{id}: gap between {p} and {e}");
            }
            last.insert(id, e.clone());
        }
        let list = c.ok("host.list", json!({})).await;
        for h in list["hosts"].as_array().unwrap() {
            let id = h["extensionId"].as_str().unwrap();
            assert_eq!(
                last[id]["to"], h["state"],
                "{id}: list disagrees with the last event"
            );
            assert_eq!(last[id]["status"]["generation"], h["generation"]);
            if h["state"] == "running" {
                assert!(process_alive(h["pid"].as_i64().unwrap() as i32));
            }
        }
        for id in IDS.iter().chain(["storm.sentinel"].iter()) {
            let _ = c.call("host.stop", json!({"extensionId": id})).await;
        }
        assert_eq!(
            marker_pids(&d.marker),
            Vec::<i32>::new(),
            "fixture processes left"
        );
    })
    .await;
}
