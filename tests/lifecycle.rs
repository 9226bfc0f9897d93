//! Host lifecycle against a real daemon and real node hosts.

// Drives real processes with Unix signals, sockets and /proc.
#![cfg(unix)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const S5: Duration = Duration::from_secs(5);
const S20: Duration = Duration::from_secs(20);

fn edges(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["kind"] == "transition")
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_string(),
                e["to"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_start_status_list_logs_stop_remove() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let st = c
            .ok(
                "host.start",
                start_params(&d, "acme.hello", "print-lines.js", &["5"]),
            )
            .await;
        assert_eq!(st["state"], "running");
        assert_eq!(st["generation"], 1);
        assert_eq!(st["restartCount"], 0);
        assert_eq!(
            st["restartBudget"],
            json!({"maxAttempts": 3, "attemptsLeft": 3})
        );
        assert!(st["startedAt"].as_str().unwrap().ends_with('Z'));
        assert!(st["node"].as_str().unwrap().ends_with("node"));
        let pid = st["pid"].as_i64().unwrap() as i32;
        assert!(process_alive(pid));

        let status = c
            .ok("host.status", json!({"extensionId": "acme.hello"}))
            .await;
        assert_eq!(status["pid"], st["pid"]);
        assert!(status["uptimeMs"].as_u64().is_some());

        c.ok(
            "host.start",
            start_params(&d, "acme.other", "print-lines.js", &["1"]),
        )
        .await;
        let list = c.ok("host.list", json!({})).await;
        let ids: Vec<_> = list["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["extensionId"].clone())
            .collect();
        assert_eq!(
            ids,
            vec![json!("acme.hello"), json!("acme.other")],
            "sorted by id"
        );

        // stdout and stderr are separate pipes: wait for the last of each.
        wait_for_output(&mut c, "acme.hello", "line 5").await;
        let lines = wait_for_output(&mut c, "acme.hello", "to stderr").await;
        let stdout: Vec<_> = lines
            .iter()
            .filter(|l| l["stream"] == "stdout")
            .map(|l| l["text"].as_str().unwrap())
            .collect();
        assert_eq!(stdout, ["line 1", "line 2", "line 3", "line 4", "line 5"]);
        assert!(
            lines
                .iter()
                .all(|l| l["at"].as_str().unwrap().ends_with('Z'))
        );
        let two = c
            .ok(
                "host.logs",
                json!({"extensionId": "acme.hello", "lines": 2}),
            )
            .await;
        assert_eq!(two["lines"].as_array().unwrap().len(), 2);

        let stopped = c
            .ok("host.stop", json!({"extensionId": "acme.hello"}))
            .await;
        assert_eq!(stopped["state"], "stopped");
        assert_eq!(stopped["pid"], Value::Null);
        assert_eq!(stopped["lastExit"]["signal"], 15);
        assert!(!process_alive(pid), "host process still alive after stop");
        // Stopping a stopped host returns it unchanged.
        let again = c
            .ok("host.stop", json!({"extensionId": "acme.hello"}))
            .await;
        assert_eq!(again["state"], "stopped");

        assert_eq!(
            c.ok("host.remove", json!({"extensionId": "acme.hello"}))
                .await,
            json!({"removed": true})
        );
        let e = c
            .err("host.status", json!({"extensionId": "acme.hello"}))
            .await;
        assert_eq!(e.code, -32001);
        assert_eq!(e.data, json!({"extensionId": "acme.hello"}));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_path_exact_events_then_crashed() {
    timed(async {
        let d = Daemon::start();
        let mut sub = d.client().await;
        sub.ok("host.subscribe", json!({"extensionIds": ["acme.crash"]}))
            .await;
        let mut c = d.client().await;
        let mut p = start_params(&d, "acme.crash", "crash-after.js", &["100", "3"]);
        p["restart"] = json!({"backoffMs": 20, "maxBackoffMs": 10000});
        c.ok("host.start", p).await;
        let events = sub.events_until(S20, |e| e["to"] == "crashed").await;
        let mut expected = vec![("stopped", "starting"), ("starting", "running")];
        for _ in 0..3 {
            expected.extend([
                ("running", "unhealthy"),
                ("unhealthy", "restarting"),
                ("restarting", "starting"),
                ("starting", "running"),
            ]);
        }
        expected.extend([("running", "unhealthy"), ("unhealthy", "crashed")]);
        assert_eq!(edges(&events), pairs(&expected));

        let reasons: Vec<_> = events
            .iter()
            .map(|e| e["reason"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(reasons[0], "start requested");
        assert_eq!(reasons[2], "exited with code 3");
        assert_eq!(reasons[3], "restarting in 20 ms (attempt 1 of 3)");
        assert_eq!(reasons[4], "backoff elapsed");
        assert_eq!(reasons[7], "restarting in 40 ms (attempt 2 of 3)");
        assert_eq!(reasons[11], "restarting in 80 ms (attempt 3 of 3)");
        assert_eq!(
            reasons.last().unwrap(),
            "restart budget exhausted: exited with code 3"
        );

        // generation counts spawns; seq strictly increases.
        let gens: Vec<_> = events
            .iter()
            .filter(|e| e["to"] == "running")
            .map(|e| e["generation"].as_u64().unwrap())
            .collect();
        assert_eq!(gens, [1, 2, 3, 4]);
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        // Restarting events carry the next restart time.
        let restarting = &events[3]["status"];
        assert!(restarting["nextRestartAt"].is_string());
        assert_eq!(restarting["restartBudget"]["attemptsLeft"], 2);

        let st = c
            .ok("host.status", json!({"extensionId": "acme.crash"}))
            .await;
        assert_eq!(st["state"], "crashed");
        assert_eq!(st["restartCount"], 3);
        assert_eq!(st["generation"], 4);
        assert_eq!(
            st["restartBudget"],
            json!({"maxAttempts": 3, "attemptsLeft": 0})
        );
        assert_eq!(st["lastExit"]["code"], 3);
        assert_eq!(st["lastExit"]["signal"], Value::Null);
        assert_eq!(st["pid"], Value::Null);
        assert_eq!(st["nextRestartAt"], Value::Null);

        // An explicit start after a crash resets the budget (the seed's rule).
        let mut p = start_params(&d, "acme.crash", "print-lines.js", &["1"]);
        p["restart"] = json!({"backoffMs": 20});
        let st = c.ok("host.start", p).await;
        assert_eq!(st["state"], "running");
        assert_eq!(st["restartBudget"]["attemptsLeft"], 3);
        assert_eq!(st["generation"], 5);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_is_restored_after_stable_running() {
    timed(async {
        let d = Daemon::start();
        let counter = d.dir.join("runs");
        let mut sub = d.client().await;
        sub.ok("host.subscribe", json!({})).await;
        let mut c = d.client().await;
        let mut p = start_params(
            &d,
            "acme.flaky",
            "crash-first-n.js",
            &[counter.to_str().unwrap(), "1"],
        );
        p["restart"] = json!({"backoffMs": 20, "stableAfterMs": 400});
        // This fixture speaks no IPC: with the ready wait off, running is
        // what counts as stable (a host the daemon waits for must be ready).
        p["readyTimeoutMs"] = json!(0);
        c.ok("host.start", p).await;
        // Second run (generation 2) stays up.
        sub.events_until(S20, |e| e["to"] == "running" && e["generation"] == 2)
            .await;
        let t0 = Instant::now();
        let st = c
            .ok("host.status", json!({"extensionId": "acme.flaky"}))
            .await;
        assert_eq!(st["restartBudget"]["attemptsLeft"], 2, "one attempt used");
        assert_eq!(st["restartCount"], 1);
        let deadline = Instant::now() + S5;
        loop {
            let st = c
                .ok("host.status", json!({"extensionId": "acme.flaky"}))
                .await;
            if st["restartBudget"]["attemptsLeft"] == 3 {
                assert!(
                    t0.elapsed() >= Duration::from_millis(300),
                    "restored too early: {:?}",
                    t0.elapsed()
                );
                assert_eq!(st["restartCount"], 1, "the lifetime count is kept");
                break;
            }
            assert!(Instant::now() < deadline, "budget never restored: {st}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_escalates_to_sigkill_for_a_host_ignoring_sigterm() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let st = c
            .ok(
                "host.start",
                start_params(&d, "acme.stubborn", "ignore-sigterm.js", &[]),
            )
            .await;
        let pid = st["pid"].as_i64().unwrap() as i32;
        wait_for_output(&mut c, "acme.stubborn", "ready").await;
        let t0 = Instant::now();
        let st = c
            .ok(
                "host.stop",
                json!({"extensionId": "acme.stubborn", "timeoutMs": 300}),
            )
            .await;
        let took = t0.elapsed();
        assert_eq!(st["state"], "stopped");
        assert_eq!(st["lastExit"]["signal"], 9, "{st}");
        assert!(
            took >= Duration::from_millis(300),
            "SIGKILL before the timeout: {took:?}"
        );
        assert!(took < Duration::from_secs(5), "stop took {took:?}");
        assert!(!process_alive(pid));
        wait_for_output(&mut c, "acme.stubborn", "got SIGTERM").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_leaves_no_grandchild_behind() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        for (id, args) in [
            ("acme.tree", vec![]),
            ("acme.tree-stubborn", vec!["ignore-term"]),
        ] {
            c.ok(
                "host.start",
                start_params(&d, id, "fork-grandchild.js", &args),
            )
            .await;
            let sleep_pid = output_pid(&mut c, id, "sleep ").await;
            assert!(process_alive(sleep_pid));
            let st = c
                .ok("host.stop", json!({"extensionId": id, "timeoutMs": 300}))
                .await;
            assert_eq!(st["state"], "stopped");
            // host.stop returns only once the whole group is gone.
            assert!(
                !process_alive(sleep_pid),
                "grandchild {sleep_pid} survived stop of {id}"
            );
        }
        assert_eq!(
            marker_pids(&d.marker),
            Vec::<i32>::new(),
            "fixture processes left"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_respawns_with_a_new_generation() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let a = c
            .ok(
                "host.start",
                start_params(&d, "acme.r", "print-lines.js", &[]),
            )
            .await;
        let b = c.ok("host.restart", json!({"extensionId": "acme.r"})).await;
        assert_eq!(b["state"], "running");
        assert_eq!(b["generation"], 2);
        assert_ne!(a["pid"], b["pid"]);
        assert!(!process_alive(a["pid"].as_i64().unwrap() as i32));
        // From stopped, restart just starts.
        c.ok("host.stop", json!({"extensionId": "acme.r"})).await;
        let c3 = c.ok("host.restart", json!({"extensionId": "acme.r"})).await;
        assert_eq!(c3["generation"], 3);
        assert_eq!(
            c.err("host.restart", json!({"extensionId": "nope"}))
                .await
                .code,
            -32001
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_transitions_and_unknown_hosts() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        c.ok(
            "host.start",
            start_params(&d, "acme.busy", "print-lines.js", &[]),
        )
        .await;
        let e = c
            .err(
                "host.start",
                start_params(&d, "acme.busy", "print-lines.js", &[]),
            )
            .await;
        assert_eq!(e.code, -32002);
        assert_eq!(
            e.data,
            json!({"extensionId": "acme.busy", "state": "running"})
        );
        let e = c
            .err("host.remove", json!({"extensionId": "acme.busy"}))
            .await;
        assert_eq!(e.code, -32002);
        for m in ["host.stop", "host.status", "host.remove", "host.logs"] {
            let e = c.err(m, json!({"extensionId": "ghost"})).await;
            assert_eq!(e.code, -32001, "{m}");
            assert_eq!(e.data["extensionId"], "ghost");
        }
        // A stopped host starts again with its last spec when entry is omitted.
        c.ok("host.stop", json!({"extensionId": "acme.busy"})).await;
        let st = c
            .ok("host.start", json!({"extensionId": "acme.busy"}))
            .await;
        assert_eq!(st["state"], "running");
        assert!(st["entry"].as_str().unwrap().ends_with("print-lines.js"));
        // A new host needs an entry.
        let e = c
            .err("host.start", json!({"extensionId": "acme.new"}))
            .await;
        assert_eq!(e.code, -32602);
        assert!(e.message.contains("entry"), "{}", e.message);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_validation_names_the_field() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let entry = fixture("print-lines.js");
        let cases = [
            (
                json!({"extensionId": "-bad", "entry": entry}),
                "extensionId",
            ),
            (
                json!({"extensionId": "a..b", "entry": entry}),
                "extensionId",
            ),
            (json!({"extensionId": "a/b", "entry": entry}), "extensionId"),
            (
                json!({"extensionId": "x".repeat(257), "entry": entry}),
                "extensionId",
            ),
            (
                json!({"extensionId": "ok", "entry": "relative.js"}),
                "entry",
            ),
            (
                json!({"extensionId": "ok", "entry": "/nonexistent/x.js"}),
                "entry",
            ),
            (json!({"extensionId": "ok", "entry": "/tmp"}), "entry"),
            (
                json!({"extensionId": "ok", "entry": entry, "env": {"A=B": "1"}}),
                "env",
            ),
            (
                json!({"extensionId": "ok", "entry": entry, "env": {"": "1"}}),
                "env",
            ),
            (
                json!({"extensionId": "ok", "entry": entry, "args": "notalist"}),
                "args",
            ),
            (
                json!({"extensionId": "ok", "entry": entry, "stopTimeoutMs": -1}),
                "stopTimeoutMs",
            ),
            (
                json!({"extensionId": "ok", "entry": entry, "restart": {"maxAttempts": "3"}}),
                "restart.maxAttempts",
            ),
            (
                json!({"extensionId": "ok", "entry": entry, "bogus": 1}),
                "bogus",
            ),
            (json!({"entry": entry}), "extensionId"),
        ];
        for (params, field) in cases {
            let e = c.err("host.start", params.clone()).await;
            assert_eq!(e.code, -32602, "{params}");
            assert!(
                e.message.contains(field),
                "{params}: message {:?} does not name {field}",
                e.message
            );
        }
        assert_eq!(
            c.ok("host.list", json!({})).await["hosts"],
            json!([]),
            "nothing registered"
        );
        let e = c
            .err("host.logs", json!({"extensionId": "ok", "lines": 10001}))
            .await;
        assert_eq!(e.code, -32602);
        assert!(e.message.contains("lines"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_failure_crashes_the_host_with_32003() {
    timed(async {
        let d = Daemon::start_with(DaemonOpts {
            config: Some("node = \"/nonexistent/bin/node\"\n".into()),
            ..Default::default()
        });
        let mut sub = d.client().await;
        sub.ok("host.subscribe", json!({})).await;
        let mut c = d.client().await;
        let e = c
            .err(
                "host.start",
                start_params(&d, "acme.nonode", "print-lines.js", &[]),
            )
            .await;
        assert_eq!(e.code, -32003);
        assert!(e.message.contains("/nonexistent/bin/node"), "{}", e.message);
        assert!(e.message.contains("No such file"), "{}", e.message);
        let events = sub.events_until(S5, |e| e["to"] == "crashed").await;
        assert_eq!(
            edges(&events),
            pairs(&[("stopped", "starting"), ("starting", "crashed")])
        );
        assert!(
            events[1]["reason"]
                .as_str()
                .unwrap()
                .starts_with("spawn failed")
        );
        let st = c
            .ok("host.status", json!({"extensionId": "acme.nonode"}))
            .await;
        assert_eq!(st["state"], "crashed");
        assert_eq!(st["generation"], 0);
        // The daemon is unharmed.
        c.ok("daemon.info", json!({})).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_environment_cwd_and_ipc_urls() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let out = d.dir.join("env.json");
        let mut p = start_params(
            &d,
            "acme.env",
            "dump-env.js",
            &[out.to_str().unwrap(), "x y"],
        );
        p["env"]["EXTRA"] = json!("1");
        c.ok("host.start", p).await;
        wait_for_output(&mut c, "acme.env", "dumped").await;
        let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(v["env"]["EXTRA"], "1");
        assert_eq!(v["argv"], json!([out.to_str().unwrap(), "x y"]));
        let fixtures = std::path::Path::new(&fixture("dump-env.js"))
            .parent()
            .unwrap()
            .to_path_buf();
        assert_eq!(
            v["cwd"],
            fixtures.to_str().unwrap(),
            "cwd defaults to the entry's directory"
        );
        let run_dir = d.socket.parent().unwrap().to_str().unwrap().to_string();
        for k in ["DSCODE_IPC_URL", "DSCODE_INCOMING_IPC_URL"] {
            let url = v["env"][k].as_str().unwrap();
            assert!(url.starts_with(&format!("ipc://{run_dir}/")), "{k}={url}");
            assert!(
                url.len() - "ipc://".len() < 108,
                "{k} too long for a socket path"
            );
        }
        assert_ne!(
            v["env"]["DSCODE_IPC_URL"],
            v["env"]["DSCODE_INCOMING_IPC_URL"]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_never_waits_behind_another_hosts_stop() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        c.ok(
            "host.start",
            start_params(&d, "acme.slow", "ignore-sigterm.js", &[]),
        )
        .await;
        c.ok(
            "host.start",
            start_params(&d, "acme.quick", "print-lines.js", &[]),
        )
        .await;
        wait_for_output(&mut c, "acme.slow", "ready").await;
        let mut stopper = d.client().await;
        let stop = tokio::spawn(async move {
            stopper
                .ok(
                    "host.stop",
                    json!({"extensionId": "acme.slow", "timeoutMs": 3000}),
                )
                .await
        });
        // While acme.slow sits in its 3 s stop timeout:
        let mut sub = d.client().await;
        sub.ok("host.subscribe", json!({"extensionIds": ["acme.slow"]}))
            .await;
        sub.events_until(S5, |e| e["to"] == "stopping").await;
        for id in ["acme.quick", "acme.slow"] {
            let t0 = Instant::now();
            let st = c.ok("host.status", json!({"extensionId": id})).await;
            assert!(
                t0.elapsed() < Duration::from_millis(500),
                "status of {id} waited {:?}",
                t0.elapsed()
            );
            assert_eq!(
                st["state"],
                if id == "acme.slow" {
                    "stopping"
                } else {
                    "running"
                }
            );
        }
        let t0 = Instant::now();
        c.ok("host.stop", json!({"extensionId": "acme.quick"}))
            .await;
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "another host's stop waited"
        );
        assert_eq!(stop.await.unwrap()["lastExit"]["signal"], 9);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_sums_the_process_group() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        // node + sh + sleep, and 64 MiB resident in node.
        c.ok(
            "host.start",
            start_params(&d, "acme.tree", "fork-grandchild.js", &[]),
        )
        .await;
        wait_for_output(&mut c, "acme.tree", "sleep ").await;
        c.ok(
            "host.start",
            start_params(&d, "acme.fat", "eat-memory.js", &["64"]),
        )
        .await;
        wait_for_output(&mut c, "acme.fat", "held 64 MiB").await;

        let tree = c
            .ok("host.usage", json!({"extensionId": "acme.tree"}))
            .await;
        assert_eq!(tree["state"], "running", "{tree}");
        assert_eq!(tree["usage"]["processes"], 3, "node, sh and sleep: {tree}");
        let fat = c.ok("host.usage", json!({"extensionId": "acme.fat"})).await;
        assert_eq!(fat["usage"]["processes"], 1, "{fat}");
        let rss = fat["usage"]["rssBytes"].as_u64().unwrap();
        assert!(rss >= 64 << 20, "64 MiB held, {rss} resident: {fat}");
        assert!(fat["usage"]["cpuMs"].as_u64().is_some(), "{fat}");

        c.ok("host.stop", json!({"extensionId": "acme.tree"})).await;
        let stopped = c
            .ok("host.usage", json!({"extensionId": "acme.tree"}))
            .await;
        assert_eq!(stopped["usage"], Value::Null, "{stopped}");
        assert_eq!(stopped["pid"], Value::Null, "{stopped}");
        assert_eq!(
            c.err("host.usage", json!({"extensionId": "acme.ghost"}))
                .await
                .code,
            -32001
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_for_leftovers_on_the_cgroup_event() {
    timed(async {
        let d = Daemon::start_with(DaemonOpts {
            env: vec![(
                "RUST_LOG".into(),
                "info,dscode_hostd::supervisor::host=debug".into(),
            )],
            ..Default::default()
        });
        let mut c = d.client().await;
        require_cgroup2(&mut c).await;
        c.ok(
            "host.start",
            start_params(&d, "acme.left", "stubborn-grandchild.js", &[]),
        )
        .await;
        let grandchild = output_pid(&mut c, "acme.left", "grandchild ").await;
        // The host exits on SIGTERM; its grandchild ignores it until the
        // SIGKILL at the timeout. The stop then ends on the cgroup's event.
        let st = c
            .ok(
                "host.stop",
                json!({"extensionId": "acme.left", "timeoutMs": 300}),
            )
            .await;
        assert_eq!(st["state"], "stopped");
        assert!(
            !process_alive(grandchild),
            "the grandchild survived the stop"
        );
        d.wait_for_log("waiting for its cgroup to empty", Duration::from_secs(5));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_daemon_never_restores_the_budget_of_a_host_that_exited() {
    timed(async {
        let d = Daemon::start();
        let mut sub = d.client().await;
        sub.ok("host.subscribe", json!({"extensionIds": ["acme.frozen"]}))
            .await;
        let mut c = d.client().await;
        // Each run exits after 500 ms, well before the 2 s stable time.
        let mut p = start_params(&d, "acme.frozen", "crash-after.js", &["500", "3"]);
        p["readyTimeoutMs"] = json!(0);
        p["restart"] = json!({"maxAttempts": 1, "backoffMs": 20, "stableAfterMs": 2000});
        c.ok("host.start", p).await;
        for generation in 1..=2 {
            sub.events_until(S20, |e| {
                e["to"] == "running" && e["generation"] == generation
            })
            .await;
            // The fault itself: the daemon frozen past both the exit and the
            // stable time. On SIGCONT both are due in one wake-up.
            signal(d.pid(), libc::SIGSTOP);
            std::thread::sleep(Duration::from_millis(2500));
            signal(d.pid(), libc::SIGCONT);
        }
        let events = sub.events_until(S20, |e| e["to"] == "crashed").await;
        let last = events.last().unwrap();
        assert_eq!(last["generation"], 2, "{last}");
        let st = c
            .ok("host.status", json!({"extensionId": "acme.frozen"}))
            .await;
        assert_eq!(st["restartCount"], 1, "{st}");
        assert_eq!(st["restartBudget"]["attemptsLeft"], 0, "{st}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_hosts_actor_kills_its_processes_and_leaves_it_crashed_not_stuck() {
    timed(async {
        // Debug builds panic in this host's actor on host.usage.
        let d = Daemon::start_with(DaemonOpts {
            env: vec![("DSCODE_HOSTD_TEST_PANIC_ON".into(), "acme.boom".into())],
            ..Default::default()
        });
        let mut sub = d.client().await;
        sub.ok("host.subscribe", json!({"extensionIds": ["acme.boom"]}))
            .await;
        let mut c = d.client().await;
        let mut p = start_params(&d, "acme.boom", "fork-grandchild.js", &[]);
        p["readyTimeoutMs"] = json!(0);
        let st = c.ok("host.start", p.clone()).await;
        let pid = st["pid"].as_i64().unwrap() as i32;
        let grandchild = output_pid(&mut c, "acme.boom", "sleep ").await;
        let _ = c
            .call("host.usage", json!({"extensionId": "acme.boom"}))
            .await;
        let events = sub.events_until(S20, |e| e["to"] == "crashed").await;
        let last = events.last().unwrap();
        assert!(
            last["reason"]
                .as_str()
                .unwrap()
                .starts_with("internal error: "),
            "{last}"
        );
        eventually(S5, "the host and its grandchild are killed", || {
            !process_alive(pid) && !process_alive(grandchild)
        })
        .await;
        // Not stuck: the id answers and starts again.
        let st = c
            .ok("host.status", json!({"extensionId": "acme.boom"}))
            .await;
        assert_eq!(st["state"], "crashed");
        let st = c.ok("host.start", p).await;
        assert_eq!(st["state"], "running");
        c.ok("host.stop", json!({"extensionId": "acme.boom"})).await;
        c.ok("daemon.info", json!({})).await;
    })
    .await;
}
