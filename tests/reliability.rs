//! Reliability under chaos and abuse: nothing lost, nothing left, nothing
//! disturbed. Bounded in time; part of `cargo test`.

// Drives real processes with Unix signals, sockets and /proc.
#![cfg(unix)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use dscode_hostd::state::{HostState, is_valid_edge};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

fn state(v: &Value) -> HostState {
    serde_json::from_value(v.clone()).unwrap()
}

const IDS: [&str; 8] = ["c.a", "c.b", "c.c", "c.d", "c.e", "c.f", "c.g", "c.h"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_storm() {
    timed(async {
        let d = Daemon::start();
        let mut subs = Vec::new();
        for _ in 0..4 {
            let mut s = d.client().await;
            s.ok("host.subscribe", json!({})).await;
            subs.push(s);
        }
        let run = |secs: u64, seed: u64| {
            let params: Vec<Value> = IDS
                .iter()
                .map(|id| {
                    let mut p = start_params(&d, id, "chaos-host.js", &[]);
                    p["stopTimeoutMs"] = json!(300);
                    p["readyTimeoutMs"] = json!(0);
                    p["restart"] = json!({"backoffMs": 20, "maxAttempts": 2});
                    p
                })
                .collect();
            let socket = d.socket.clone();
            async move {
                let mut tasks = Vec::new();
                for client in 0..16u64 {
                    let params = params.clone();
                    let socket = socket.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut c = Client::connect(&socket).await;
                        let mut rng = Rng(seed ^ (client + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                        let deadline = Instant::now() + Duration::from_secs(secs);
                        let mut calls = 0u64;
                        while Instant::now() < deadline {
                            let i = rng.below(IDS.len() as u64) as usize;
                            let id = IDS[i];
                            let r = match rng.below(10) {
                                0..=2 => c.call("host.start", params[i].clone()).await,
                                3..=4 => c.call("host.stop", json!({"extensionId": id})).await,
                                5 => c.call("host.restart", json!({"extensionId": id})).await,
                                6 => c.call("host.remove", json!({"extensionId": id})).await,
                                _ => c.call("host.status", json!({"extensionId": id})).await,
                            };
                            calls += 1;
                            if let Err(e) = r {
                                assert!(
                                    matches!(e.code, -32001 | -32002),
                                    "unexpected error {e:?}"
                                );
                            }
                        }
                        calls
                    }));
                }
                let mut total = 0;
                for t in tasks {
                    total += t.await.unwrap();
                }
                total
            }
        };
        let warm_calls = run(5, 1).await;
        let warm_rss = rss_kib(d.pid()) as i64;
        let calls = run(25, 2).await;
        eprintln!(
            "chaos: {} calls, warm RSS {warm_rss} KiB",
            warm_calls + calls
        );

        // Quiesce: stop everything, then a sentinel event after it all.
        let mut c = d.client().await;
        for id in IDS {
            let _ = c.call("host.stop", json!({"extensionId": id})).await;
        }
        c.ok(
            "host.start",
            start_params(&d, "zz.sentinel", "print-lines.js", &["1"]),
        )
        .await;
        let mut streams = Vec::new();
        for s in &mut subs {
            streams.push(
                s.events_until(Duration::from_secs(60), |e| {
                    e["extensionId"] == "zz.sentinel" && e["to"] == "running"
                })
                .await,
            );
        }
        // Identical and strictly ordered across subscribers.
        for s in &streams[1..] {
            assert_eq!(s, &streams[0], "subscribers disagree");
        }
        let events = &streams[0];
        assert!(events.len() > 100, "the storm did little: {}", events.len());
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        // Each host's stream is a valid path in the transition table.
        let mut last: HashMap<String, Value> = HashMap::new();
        for e in events {
            let id = e["extensionId"].as_str().unwrap().to_string();
            match e["kind"].as_str().unwrap() {
                "transition" => {
                    let (from, to) = (state(&e["from"]), state(&e["to"]));
                    assert!(is_valid_edge(from, to), "{id}: {from} -> {to}");
                    if let Some(p) = last.get(&id) {
                        assert_eq!(p["to"], e["from"], "{id}: gap between {p} and {e}");
                    } else {
                        assert_eq!(from, HostState::Stopped, "{id}: first event {e}");
                    }
                    last.insert(id, e.clone());
                }
                "removed" => {
                    last.remove(&id);
                }
                "ready" | "snapshot" => {}
                other => panic!("unexpected event kind {other}: {e}"),
            }
        }
        // host.list agrees with the last event of each host.
        let list = c.ok("host.list", json!({})).await;
        let hosts = list["hosts"].as_array().unwrap();
        assert_eq!(
            hosts.len(),
            last.len(),
            "list {hosts:?} vs events {:?}",
            last.keys()
        );
        for h in hosts {
            let id = h["extensionId"].as_str().unwrap();
            assert_eq!(last[id]["to"], h["state"], "{id}");
            assert_eq!(last[id]["status"]["generation"], h["generation"], "{id}");
        }
        c.ok("host.stop", json!({"extensionId": "zz.sentinel"}))
            .await;
        assert_eq!(
            marker_pids(&d.marker),
            Vec::<i32>::new(),
            "fixture processes left"
        );
        let end_rss = rss_kib(d.pid()) as i64;
        assert!(
            (end_rss - warm_rss).abs() <= 2048,
            "RSS drifted: {warm_rss} KiB after warm-up, {end_rss} KiB at the end"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_leaves_the_daemon_and_its_host_undisturbed() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let before = c.ok("host.start", start_params(&d, "acme.steady", "print-lines.js", &[])).await;

        // 1,000 connections opened and dropped.
        for _ in 0..1000 {
            drop(tokio::net::UnixStream::connect(&d.socket).await.unwrap());
        }
        // Half a line, then stall.
        let mut stalled = Vec::new();
        for _ in 0..20 {
            let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
            s.write_all(br#"{"jsonrpc":"2.0","id":1,"meth"#).await.unwrap();
            stalled.push(s);
        }
        // Subscribe and never read, while events flow.
        let mut deaf = Vec::new();
        for _ in 0..10 {
            let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
            s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"host.subscribe\"}\n").await.unwrap();
            deaf.push(s);
        }
        for i in 0..50 {
            let id = format!("acme.churn{}", i % 5);
            let _ = c.call("host.start", start_params(&d, &id, "print-lines.js", &[])).await;
            let _ = c.call("host.stop", json!({"extensionId": id})).await;
        }
        // Random bytes, deep nesting, huge numbers, invalid UTF-8.
        let mut rng = Rng(42);
        for _ in 0..20 {
            let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
            let junk: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
            let _ = s.write_all(&junk).await;
        }
        let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
        let mut nasty = Vec::new();
        nasty.extend_from_slice("[".repeat(100_000).as_bytes());
        nasty.push(b'\n');
        nasty.extend_from_slice(format!("{{\"jsonrpc\":\"2.0\",\"id\":1e999999,\"method\":\"daemon.info\",\"params\":{{\"n\":{}}}}}\n", "9".repeat(10_000)).as_bytes());
        nasty.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":\"\xff\xfe\",\"method\":\"daemon.info\"}\n");
        s.write_all(&nasty).await.unwrap();

        // Still answering, promptly, and the host was never disturbed.
        let mut fresh = d.client().await;
        let t0 = Instant::now();
        fresh.ok("daemon.info", json!({})).await;
        let st = fresh.ok("host.status", json!({"extensionId": "acme.steady"})).await;
        assert!(t0.elapsed() < Duration::from_millis(500), "slow after abuse: {:?}", t0.elapsed());
        assert_eq!(st["pid"], before["pid"]);
        assert_eq!(st["generation"], 1);
        assert_eq!(st["state"], "running");
        assert!(process_alive(st["pid"].as_i64().unwrap() as i32));
        drop((stalled, deaf, s));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_is_rate_limited_marked_and_the_log_dir_capped() {
    timed(async {
        let d = Daemon::start_with(DaemonOpts {
            config: Some("log_rate_lines = 200\nlog_max_bytes = 65536\nlog_max_files = 3\n".into()),
            ..Default::default()
        });
        let mut c = d.client().await;
        let mut p = start_params(&d, "acme.flood", "flood.js", &["1500", "100"]);
        p["readyTimeoutMs"] = json!(0);
        c.ok("host.start", p).await;
        let lines = wait_for_output(&mut c, "acme.flood", "flood done").await;
        let text: Vec<&str> = lines.iter().filter_map(|l| l["text"].as_str()).collect();
        let written: u64 = text
            .iter()
            .find_map(|t| t.strip_prefix("flood done "))
            .unwrap()
            .parse()
            .unwrap();
        let dropped: u64 = text
            .iter()
            .filter_map(|t| t.strip_prefix("… "))
            .filter_map(|t| t.split(' ').next()?.parse::<u64>().ok())
            .sum();
        let kept = text.iter().filter(|t| t.starts_with("xxx")).count() as u64;
        eprintln!("flood: {written} lines written, {kept} kept, {dropped} reported dropped");
        assert!(
            dropped > 0,
            "no marker: {:?}",
            &text[text.len().saturating_sub(5)..]
        );
        // 200 lines/s with a 2 s burst over ~1.5 s: at most ~700 kept.
        assert!(kept <= 800, "{kept} lines kept");
        assert_eq!(kept + dropped, written, "every line is kept or counted");
        // The log directory is capped: 3 files of at most 64 KiB (+ a line).
        let state = d.dir.join("state");
        let logs: Vec<u64> = std::fs::read_dir(&state)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("dscode-hostd.") && n.ends_with(".log"))
            })
            .map(|e| e.metadata().unwrap().len())
            .collect();
        assert!(logs.len() <= 3, "{} log files", logs.len());
        assert!(
            logs.iter().all(|&n| n <= 65536 + 16 * 1024),
            "a log file past its cap: {logs:?}"
        );
        // Host lines went to the file, not to stderr as well.
        assert!(
            !d.log_text().contains("xxxxxxxxxx"),
            "host output on stderr"
        );
        c.ok("daemon.info", json!({})).await;
    })
    .await;
}
