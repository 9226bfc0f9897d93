//! The extension-host IPC broker against the reference host fixture.

// Drives real processes with Unix signals, sockets and /proc.
#![cfg(unix)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const S10: Duration = Duration::from_secs(10);

fn ipc_host(d: &Daemon, id: &str, mode: &str) -> Value {
    let mut p = start_params(d, id, "ipc-host.js", &[]);
    p["env"]["IPC_HOST_MODE"] = json!(mode);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_handshake_and_the_ready_event() {
    timed(async {
        let d = Daemon::start();
        let mut sub = d.client().await;
        sub.ok("host.subscribe", json!({})).await;
        let mut c = d.client().await;
        let st = c.ok("host.start", ipc_host(&d, "acme.ipc", "echo")).await;
        assert_eq!(st["ready"], false);
        let events = sub.events_until(S10, |e| e["kind"] == "ready").await;
        let ready = events.last().unwrap();
        assert_eq!(ready["extensionId"], "acme.ipc");
        assert_eq!(ready["generation"], 1);
        assert_eq!(ready["status"]["ready"], true);
        assert_eq!(ready["from"], "running");
        assert_eq!(ready["to"], "running");
        let st = c
            .ok("host.status", json!({"extensionId": "acme.ipc"}))
            .await;
        assert_eq!(st["ready"], true);
        assert!(st["readyAt"].as_str().unwrap().ends_with('Z'));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_ready_in_all_three_outcomes() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        // Ready.
        let mut p = ipc_host(&d, "acme.ok", "echo");
        p["waitReady"] = json!(true);
        let st = c.ok("host.start", p).await;
        assert_eq!(st["ready"], true, "{st}");
        assert_eq!(st["state"], "running");

        // The host exits first: -32011 with the exit.
        let mut p = start_params(&d, "acme.dies", "crash-after.js", &["50", "3"]);
        p["waitReady"] = json!(true);
        p["restart"] = json!({"maxAttempts": 0});
        let e = c.err("host.start", p).await;
        assert_eq!(e.code, -32011, "{e:?}");
        assert_eq!(e.data["lastExit"]["code"], 3, "{e:?}");

        // Never ready: -32012 after readyTimeoutMs, and the host is killed and
        // restarted within its budget with the reason.
        let mut sub = d.client().await;
        sub.ok("host.subscribe", json!({"extensionIds": ["acme.mute"]}))
            .await;
        let mut p = ipc_host(&d, "acme.mute", "never-ready");
        p["waitReady"] = json!(true);
        p["readyTimeoutMs"] = json!(300);
        p["restart"] = json!({"backoffMs": 20, "maxAttempts": 1});
        let t0 = Instant::now();
        let e = c.err("host.start", p).await;
        assert_eq!(e.code, -32012, "{e:?}");
        assert!(t0.elapsed() >= Duration::from_millis(300));
        let events = sub.events_until(S10, |e| e["to"] == "crashed").await;
        let reasons: Vec<&str> = events
            .iter()
            .map(|e| e["reason"].as_str().unwrap())
            .collect();
        assert!(reasons.contains(&"not ready within 300 ms"), "{reasons:?}");
        assert!(
            events.iter().any(|e| e["to"] == "restarting"),
            "restarted within budget: {reasons:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_response_error_one_way_and_not_ready() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let mut p = ipc_host(&d, "acme.echo", "echo");
        p["waitReady"] = json!(true);
        c.ok("host.start", p).await;
        let r = c
            .ok("host.request", json!({"extensionId": "acme.echo", "type": "echo", "payload": {"a": [1, 2], "s": "x\ny"}}))
            .await;
        assert_eq!(r, json!({"a": [1, 2], "s": "x\ny"}));
        let e = c
            .err("host.request", json!({"extensionId": "acme.echo", "type": "fail", "payload": {"message": "nope"}}))
            .await;
        assert_eq!(e.code, -32020);
        assert_eq!(e.message, "nope");
        assert_eq!(e.data["type"], "fail-error");
        assert_eq!(e.data["payload"]["error"], "nope");
        // One-way.
        c.ok("host.send", json!({"extensionId": "acme.echo", "type": "note", "payload": {"n": 1}})).await;
        wait_for_output(&mut c, "acme.echo", r#"note {"n":1}"#).await;
        // A host that never speaks the protocol is not ready: -32021 at once.
        c.ok("host.start", start_params(&d, "acme.plain", "print-lines.js", &[])).await;
        let t0 = Instant::now();
        let e = c.err("host.request", json!({"extensionId": "acme.plain", "type": "echo"})).await;
        assert_eq!(e.code, -32021);
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_eq!(c.err("host.request", json!({"extensionId": "ghost", "type": "echo"})).await.code, -32001);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_requests_in_flight_complete_concurrently() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let mut p = ipc_host(&d, "acme.slow", "slow-reply");
        p["env"]["IPC_HOST_DELAY_MS"] = json!("300");
        p["waitReady"] = json!(true);
        c.ok("host.start", p).await;
        let mut conn = RawConn::connect(&d.socket).await;
        let mut batch = String::new();
        // 100 pipelined: 64 run at once (the per-connection bound), the
        // rest wait their turn; none is dropped.
        for i in 0..100 {
            batch.push_str(
                &json!({"jsonrpc": "2.0", "id": i, "method": "host.request", "params": {"extensionId": "acme.slow", "type": "echo", "payload": {"i": i}}})
                    .to_string(),
            );
            batch.push('\n');
        }
        let t0 = Instant::now();
        conn.send(batch.as_bytes()).await;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let v = conn.line().await;
            assert_eq!(v["result"]["i"], v["id"], "{v}");
            seen.insert(v["id"].as_i64().unwrap());
        }
        let took = t0.elapsed();
        assert_eq!(seen.len(), 100);
        // Serialized they would take 100 x 300 ms = 30 s; bounded at 64 in
        // flight they take two rounds.
        assert!(took < Duration::from_secs(3), "100 requests took {took:?}: serialized?");
        assert!(took >= Duration::from_millis(600), "{took:?}: more than 64 ran at once");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_and_fail_fast_when_the_host_dies_mid_request() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let mut p = ipc_host(&d, "acme.t", "echo");
        p["waitReady"] = json!(true);
        c.ok("host.start", p).await;
        let t0 = Instant::now();
        let e = c
            .err("host.request", json!({"extensionId": "acme.t", "type": "slow", "payload": {"ms": 3000}, "timeoutMs": 200}))
            .await;
        assert_eq!(e.code, -32022);
        assert!(t0.elapsed() < Duration::from_secs(2));

        let mut slow = d.client().await;
        let pending = tokio::spawn(async move {
            let t0 = Instant::now();
            let r = slow
                .call("host.request", json!({"extensionId": "acme.t", "type": "slow", "payload": {"ms": 20000}, "timeoutMs": 25000}))
                .await;
            (r, t0.elapsed())
        });
        // The host logs each slow request as it gets it: now it is in flight.
        wait_for_output(&mut c, "acme.t", "slow 20000").await;
        let e = c.err("host.request", json!({"extensionId": "acme.t", "type": "crash"})).await;
        assert_eq!(e.code, -32023, "the crash request itself: {e:?}");
        let (r, took) = pending.await.unwrap();
        let e = r.unwrap_err();
        assert_eq!(e.code, -32023, "{e:?}");
        assert!(took < Duration::from_secs(3), "failed after {took:?}, not at once");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_catches_a_hung_host_and_it_is_restarted() {
    timed(async {
        let d = Daemon::start();
        let mut sub = d.client().await;
        sub.ok("host.subscribe", json!({"extensionIds": ["acme.hang"]}))
            .await;
        let mut c = d.client().await;
        let mut p = ipc_host(&d, "acme.hang", "hang-after-ready");
        p["heartbeatIntervalMs"] = json!(100);
        p["heartbeatTimeoutMs"] = json!(300);
        p["restart"] = json!({"backoffMs": 20});
        c.ok("host.start", p).await;
        let events = sub
            .events_until(S10, |e| {
                e["to"] == "running" && e["kind"] == "transition" && e["generation"] == 2
            })
            .await;
        let unhealthy = events
            .iter()
            .find(|e| e["to"] == "unhealthy")
            .expect("never marked unhealthy");
        assert_eq!(unhealthy["from"], "running");
        assert_eq!(unhealthy["reason"], "unresponsive for 300 ms");
        let idx = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred).unwrap();
        assert!(idx(&|e| e["kind"] == "ready") < idx(&|e| e["to"] == "unhealthy"));
        assert!(idx(&|e| e["to"] == "unhealthy") < idx(&|e| e["to"] == "restarting"));
        let st = c
            .ok("host.status", json!({"extensionId": "acme.hang"}))
            .await;
        assert_eq!(st["lastExit"]["signal"], 9, "killed: {st}");
        assert_eq!(st["restartCount"], 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_originated_requests_answered_by_an_editor_queued_or_timed_out() {
    timed(async {
        let d = Daemon::start_with(DaemonOpts {
            config: Some("host_request_timeout_ms = 400\n".into()),
            ..Default::default()
        });
        // Nobody attached, nobody comes: the request waits in the host's
        // queue and is answered "timed out" at its deadline.
        let mut c = d.client().await;
        c.ok("host.start", ipc_host(&d, "acme.lonely", "chatty"))
            .await;
        wait_for_output(
            &mut c,
            "acme.lonely",
            r#"window-show-message-with-actions-error {"error":"timed out"}"#,
        )
        .await;
        let u = c
            .ok("host.usage", json!({"extensionId": "acme.lonely"}))
            .await;
        assert_eq!(u["waitingRequests"], 0, "{u}");
        assert_eq!(u["ipc"]["hostRequests"], 1, "{u}");

        // An editor subscribed: it gets host.message and answers.
        let mut editor = d.client().await;
        let sub_id = editor
            .ok(
                "host.subscribeMessages",
                json!({"extensionIds": ["acme.chatty"]}),
            )
            .await;
        c.ok("host.start", ipc_host(&d, "acme.chatty", "chatty"))
            .await;
        let n = tokio::time::timeout(S10, editor.notifications.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n["method"], "host.message");
        assert_eq!(n["params"]["subscription"], sub_id);
        let m = &n["params"]["result"];
        assert_eq!(m["extensionId"], "acme.chatty");
        assert_eq!(m["type"], "window-show-message-with-actions");
        assert_eq!(m["payload"]["message"], "Reload?");
        let answer =
            json!({"extensionId": "acme.chatty", "id": m["id"], "payload": {"choice": "Yes"}});
        editor.ok("host.respond", answer.clone()).await;
        wait_for_output(
            &mut c,
            "acme.chatty",
            r#"window-show-message-with-actions-response {"choice":"Yes"}"#,
        )
        .await;
        let e = editor.err("host.respond", answer).await;
        assert_eq!(e.code, -32024);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_fails_only_that_host() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let mut other = ipc_host(&d, "acme.good", "echo");
        other["waitReady"] = json!(true);
        c.ok("host.start", other).await;
        let mut sub = d.client().await;
        sub.ok("host.subscribe", json!({"extensionIds": ["acme.bad"]}))
            .await;
        let mut p = ipc_host(&d, "acme.bad", "zero-frame");
        p["restart"] = json!({"backoffMs": 20, "maxAttempts": 1});
        c.ok("host.start", p).await;
        let events = sub.events_until(S10, |e| e["to"] == "unhealthy").await;
        let reason = events.last().unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            reason.contains("malformed IPC frame") && reason.contains("zero-length"),
            "{reason}"
        );
        sub.events_until(S10, |e| e["to"] == "crashed").await;
        // The daemon and the other host are unharmed.
        let r = c
            .ok(
                "host.request",
                json!({"extensionId": "acme.good", "type": "echo", "payload": 5}),
            )
            .await;
        assert_eq!(r, json!(5));
        assert!(d.log_text().contains("acme.bad"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_host_has_a_private_ipc_directory_removed_with_the_host() {
    use std::os::unix::fs::PermissionsExt;
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let mut dirs = Vec::new();
        for id in ["acme.one", "acme.two"] {
            let mut p = ipc_host(&d, id, "echo");
            p["waitReady"] = json!(true);
            let st = c.ok("host.start", p).await;
            let url = std::path::PathBuf::from(
                host_env(st["pid"].as_i64().unwrap() as i32, "DSCODE_IPC_URL")
                    .strip_prefix("ipc://")
                    .unwrap(),
            );
            let dir = url.parent().unwrap().to_path_buf();
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
            assert!(dir.join("daemon.sock").exists() || dir.join("host.sock").exists());
            dirs.push(dir);
        }
        assert_ne!(dirs[0], dirs[1]);
        assert_eq!(dirs[0].parent(), dirs[1].parent());
        c.ok("host.stop", json!({"extensionId": "acme.one"})).await;
        c.ok("host.remove", json!({"extensionId": "acme.one"}))
            .await;
        assert!(!dirs[0].exists(), "removed host's IPC dir is left");
        assert!(dirs[1].exists());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_host_cannot_take_a_hosts_channel() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        // The victim is slow to connect to its daemon-side socket...
        let mut p = ipc_host(&d, "acme.victim", "echo");
        p["env"]["IPC_HOST_CONNECT_DELAY_MS"] = json!("1500");
        let victim = c.ok("host.start", p).await;
        let incoming = host_env(
            victim["pid"].as_i64().unwrap() as i32,
            "DSCODE_INCOMING_IPC_URL",
        )
        .strip_prefix("ipc://")
        .unwrap()
        .to_string();
        // ...and another host of the same user gets there first.
        let result = d.dir.join("impostor.json");
        c.ok(
            "host.start",
            start_params(
                &d,
                "acme.impostor",
                "ipc-impostor.js",
                &[&incoming, result.to_str().unwrap()],
            ),
        )
        .await;
        wait_for_file(&result).await;
        let r: Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
        assert_eq!(
            r["outcome"], "closed",
            "the daemon kept the impostor's connection: {r}"
        );
        d.wait_for_log("outside the host's process group", Duration::from_secs(5));
        // The victim's own handshake still works.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c
                .call(
                    "host.request",
                    json!({"extensionId": "acme.victim", "type": "echo", "payload": {"me": 1}}),
                )
                .await
            {
                Ok(v) => {
                    assert_eq!(v["me"], 1, "{v}");
                    break;
                }
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "the victim never became ready: {e:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// The next `host.message` on `editor`'s connection, within 10 s.
async fn next_message(editor: &mut Client) -> Value {
    let n = tokio::time::timeout(S10, editor.notifications.recv())
        .await
        .expect("no host.message within 10 s")
        .unwrap();
    assert_eq!(n["method"], "host.message", "{n}");
    n["params"]["result"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_editor_goes_away_goes_to_another_at_once() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let mut first = d.client().await;
        first
            .ok(
                "host.subscribeMessages",
                json!({"extensionIds": ["acme.ask"]}),
            )
            .await;
        c.ok("host.start", ipc_host(&d, "acme.ask", "chatty")).await;
        let m = next_message(&mut first).await;
        assert_eq!(m["type"], "window-show-message-with-actions");
        // A second editor attaches after the request went out, then the
        // first one dies: the second gets the request at once.
        let mut second = d.client().await;
        second
            .ok(
                "host.subscribeMessages",
                json!({"extensionIds": ["acme.ask"]}),
            )
            .await;
        drop(first);
        let t0 = Instant::now();
        let again = next_message(&mut second).await;
        assert_eq!(again["id"], m["id"]);
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        second
            .ok(
                "host.respond",
                json!({"extensionId": "acme.ask", "id": again["id"], "payload": {"choice": "No"}}),
            )
            .await;
        wait_for_output(
            &mut c,
            "acme.ask",
            r#"window-show-message-with-actions-response {"choice":"No"}"#,
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_only_editor_goes_away_waits_for_the_next() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let mut only = d.client().await;
        only.ok(
            "host.subscribeMessages",
            json!({"extensionIds": ["acme.ask"]}),
        )
        .await;
        c.ok("host.start", ipc_host(&d, "acme.ask", "chatty")).await;
        let m = next_message(&mut only).await;
        drop(only);
        // Back in the host's queue: the next editor gets it (before, it was
        // lost to editors and answered "timed out" 30 s later).
        let mut next = d.client().await;
        next.ok(
            "host.subscribeMessages",
            json!({"extensionIds": ["acme.ask"]}),
        )
        .await;
        let again = next_message(&mut next).await;
        assert_eq!(again["id"], m["id"]);
        next.ok(
            "host.respond",
            json!({"extensionId": "acme.ask", "id": again["id"], "payload": {"choice": "Yes"}}),
        )
        .await;
        wait_for_output(
            &mut c,
            "acme.ask",
            r#"window-show-message-with-actions-response {"choice":"Yes"}"#,
        )
        .await;
    })
    .await;
}
