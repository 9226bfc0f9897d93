//! Conformance with DSCode's real extension host: `fixtures/real-host.js`
//! behaves as the real one does (listens first and waits for the backend,
//! ready as a request, start-up questions, exit 1 on an error reply), and the
//! older-order fixture keeps working beside it.

// Drives real processes with Unix signals, sockets and /proc.
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const S10: Duration = Duration::from_secs(10);

/// An extensions directory with `acme.hello` and `acme.other`.
fn extensions_dir(d: &Daemon) -> PathBuf {
    let dir = d.dir.join("extensions");
    for (folder, name) in [("acme.hello-1.0.0", "hello"), ("acme.other-2.0.0", "other")] {
        let ext = dir.join(folder);
        std::fs::create_dir_all(&ext).unwrap();
        std::fs::write(
            ext.join("package.json"),
            json!({"name": name, "publisher": "acme", "version": "1.0.0", "main": "x.js"})
                .to_string(),
        )
        .unwrap();
    }
    dir
}

/// `host.start` params for the session host "main" running the real-host
/// fixture over `dir`, answered once it is ready.
fn session(d: &Daemon, dir: &Path) -> Value {
    let mut p = start_params(d, "main", "real-host.js", &[]);
    p["extensionsDir"] = json!(dir);
    p["waitReady"] = json!(true);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_host_becomes_ready_with_no_editor_and_serves_the_editor() {
    timed(async {
        let d = Daemon::start();
        let dir = extensions_dir(&d);
        let mut c = d.client().await;
        let p = session(&d, &dir);
        let t0 = Instant::now();
        let st = c.ok("host.start", p).await;
        let took = t0.elapsed();
        assert_eq!(st["ready"], true, "{st}");
        assert!(took < Duration::from_secs(2), "ready after {took:?}");
        // The fixture exits 3 if the ready reply took over 1 s, and 1 if
        // get-extensions-dir failed; it loaded both extensions instead.
        wait_for_output(&mut c, "main", "loaded 2 extensions from").await;

        // Relay: the backend's requests.
        let list = c
            .ok(
                "host.request",
                json!({"extensionId": "main", "type": "list-extensions"}),
            )
            .await;
        let mut ids: Vec<_> = list["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        assert_eq!(ids, ["acme.hello", "acme.other"]);

        // Activation asks get-extension-storage, which the daemon answers
        // with directories under the host's private storage, which the
        // sandboxed host can write.
        let r = c
            .ok(
                "host.request",
                json!({"extensionId": "main", "type": "activate-extension",
                       "payload": {"extensionId": "acme.hello"}}),
            )
            .await;
        assert_eq!(r["success"], true, "{r}");
        let global = PathBuf::from(r["storage"]["global"].as_str().unwrap());
        assert!(
            global.starts_with(d.dir.join("state/hosts/main/storage/acme.hello")),
            "{}",
            global.display()
        );
        assert!(global.join("state.json").is_file());

        // A host request with an editor attached: answered via host.respond.
        let mut editor = d.client().await;
        editor
            .ok("host.subscribeMessages", json!({"extensionIds": ["main"]}))
            .await;
        let asking = tokio::spawn({
            let socket = d.socket.clone();
            async move {
                let mut c = Client::connect(&socket).await;
                c.ok(
                    "host.request",
                    json!({"extensionId": "main", "type": "executeCommand",
                           "payload": {"command": "fixture.askEditor"}}),
                )
                .await
            }
        });
        let n = tokio::time::timeout(S10, editor.notifications.recv())
            .await
            .unwrap()
            .unwrap();
        let m = &n["params"]["result"];
        assert_eq!(m["type"], "window-show-message-with-actions", "{n}");
        editor
            .ok(
                "host.respond",
                json!({"extensionId": "main", "id": m["id"], "payload": {"action": "Yes"}}),
            )
            .await;
        assert_eq!(asking.await.unwrap(), json!({"action": "Yes"}));

        // The heartbeat is answered `ping-error` (no handler), which counts.
        let st = c.ok("host.status", json!({"extensionId": "main"})).await;
        assert_eq!(st["state"], "running");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_replies_reach_the_requester_as_host_partial() {
    timed(async {
        let d = Daemon::start();
        let dir = extensions_dir(&d);
        let mut c = d.client().await;
        let p = session(&d, &dir);
        c.ok("host.start", p).await;
        let r = c
            .ok(
                "host.request",
                json!({"extensionId": "main", "type": "stream", "payload": {"n": 3}}),
            )
            .await;
        assert_eq!(r, json!({"done": 3}));
        let mut chunks = Vec::new();
        while let Ok(n) = c.notifications.try_recv() {
            assert_eq!(n["method"], "host.partial", "{n}");
            let p = &n["params"];
            assert_eq!(p["extensionId"], "main");
            assert_eq!(p["type"], "stream-partial");
            assert!(p["requestId"].is_u64(), "{n}");
            chunks.push(p["payload"]["chunk"].clone());
        }
        assert_eq!(
            chunks,
            [json!(0), json!(1), json!(2)],
            "partials arrive before the reply"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_from_before_any_editor_goes_to_the_first_one() {
    timed(async {
        let d = Daemon::start();
        let dir = extensions_dir(&d);
        let mut c = d.client().await;
        let mut p = session(&d, &dir);
        p["env"]["REAL_HOST_STARTUP_ASK"] = json!("workspace-get-configuration");
        c.ok("host.start", p).await;
        // The request waits in the host's queue (no editor yet).
        let deadline = Instant::now() + S10;
        loop {
            let u = c.ok("host.usage", json!({"extensionId": "main"})).await;
            if u["waitingRequests"] == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "never queued: {u}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A late editor gets it at once, and its answer reaches the host.
        let mut editor = d.client().await;
        editor
            .ok("host.subscribeMessages", json!({"extensionIds": ["main"]}))
            .await;
        let n = tokio::time::timeout(S10, editor.notifications.recv())
            .await
            .unwrap()
            .unwrap();
        let m = &n["params"]["result"];
        assert_eq!(m["type"], "workspace-get-configuration", "{n}");
        assert_eq!(m["payload"], json!({"section": "editor"}));
        editor
            .ok(
                "host.respond",
                json!({"extensionId": "main", "id": m["id"], "payload": {"tabSize": 4}}),
            )
            .await;
        wait_for_output(&mut c, "main", r#"startup answer {"tabSize":4}"#).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_answers_and_a_missing_extensions_dir() {
    timed(async {
        let d = Daemon::start_with(DaemonOpts {
            config: Some(
                "host_request_timeout_ms = 300\n\
                 [static_answers]\n\
                 workspace-get-configuration = { tabSize = 2 }\n"
                    .into(),
            ),
            ..Default::default()
        });
        let dir = extensions_dir(&d);
        let mut c = d.client().await;
        // The daemon-wide table answers; a host's own table wins over it.
        let mut p = session(&d, &dir);
        p["env"]["REAL_HOST_STARTUP_ASK"] = json!("workspace-get-configuration");
        c.ok("host.start", p).await;
        wait_for_output(&mut c, "main", r#"startup answer {"tabSize":2}"#).await;
        let mut p = session(&d, &dir);
        p["extensionId"] = json!("second");
        p["env"]["REAL_HOST_STARTUP_ASK"] = json!("workspace-get-configuration");
        p["staticAnswers"] = json!({"workspace-get-configuration": {"tabSize": 8}});
        c.ok("host.start", p).await;
        wait_for_output(&mut c, "second", r#"startup answer {"tabSize":8}"#).await;

        // Without extensionsDir nobody answers get-extensions-dir: it
        // times out, and the real host exits 1 (then is restarted).
        let mut sub = d.client().await;
        sub.ok("host.subscribe", json!({"extensionIds": ["nodir"]}))
            .await;
        let mut p = start_params(&d, "nodir", "real-host.js", &[]);
        p["restart"] = json!({"maxAttempts": 0});
        c.ok("host.start", p).await;
        let events = sub.events_until(S10, |e| e["to"] == "crashed").await;
        let last = events.last().unwrap();
        assert_eq!(last["status"]["lastExit"]["code"], 1, "{last}");

        // Bad tables are refused, naming the field.
        let mut p = session(&d, &dir);
        p["extensionId"] = json!("bad");
        p["staticAnswers"] = json!({"extension-host-ready": {}});
        let e = c.err("host.start", p).await;
        assert_eq!(e.code, -32602);
        assert!(e.message.contains("staticAnswers"), "{e:?}");
        let mut p = session(&d, &dir);
        p["extensionId"] = json!("bad");
        p["extensionsDir"] = json!(d.dir.join("nope"));
        let e = c.err("host.start", p).await;
        assert!(e.message.contains("extensionsDir"), "{e:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_it_comes_back_ready_and_stop_leaves_nothing() {
    timed(async {
        let d = Daemon::start();
        let dir = extensions_dir(&d);
        let mut sub = d.client().await;
        sub.ok("host.subscribe", json!({"extensionIds": ["main"]}))
            .await;
        let mut c = d.client().await;
        let mut p = session(&d, &dir);
        p["restart"] = json!({"backoffMs": 20});
        let st = c.ok("host.start", p).await;
        let pid = st["pid"].as_i64().unwrap() as i32;
        signal(pid, SIGKILL);
        sub.events_until(S10, |e| e["kind"] == "ready" && e["generation"] == 2)
            .await;
        // Ready is the handshake; the host loads its extensions just after.
        let deadline = Instant::now() + S10;
        loop {
            let out = c
                .ok("host.logs", json!({"extensionId": "main", "lines": 1000}))
                .await;
            // The first run may be killed before it loaded anything: look
            // after the second run's first line.
            let text: Vec<String> = out["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["text"].as_str().unwrap().to_string())
                .collect();
            let runs = text.iter().filter(|t| t.ends_with("] starting")).count();
            let second = text.iter().rposition(|t| t.ends_with("] starting"));
            let loaded = second.is_some_and(|i| {
                text[i..]
                    .iter()
                    .any(|t| t.starts_with("loaded 2 extensions"))
            });
            if runs == 2 && loaded {
                break;
            }
            assert!(Instant::now() < deadline, "second run never loaded: {out}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r = c
            .ok(
                "host.request",
                json!({"extensionId": "main", "type": "list-extensions"}),
            )
            .await;
        assert_eq!(r["extensions"].as_array().unwrap().len(), 2);
        let st = c.ok("host.stop", json!({"extensionId": "main"})).await;
        assert_eq!(st["state"], "stopped");
        assert!(marker_pids(&d.marker).is_empty(), "leftovers after stop");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_says_ready_before_it_listens_is_ready_once_it_listens() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let mut p = start_params(&d, "acme.early", "ipc-host.js", &[]);
        p["env"]["IPC_HOST_READY_FIRST"] = json!("1");
        p["waitReady"] = json!(true);
        let st = c.ok("host.start", p).await;
        assert_eq!(st["ready"], true);
        let lines = wait_for_output(&mut c, "acme.early", "listening late").await;
        // Ready needs both halves: the host said ready before it listened.
        let text: Vec<_> = lines.iter().map(|l| l["text"].as_str().unwrap()).collect();
        let said = text.iter().position(|t| *t == "sent ready").unwrap();
        let listened = text.iter().position(|t| *t == "listening late").unwrap();
        assert!(said < listened, "{text:?}");
        // And the daemon answered its ready request.
        wait_for_output(
            &mut c,
            "acme.early",
            r#"got reply extension-host-ready-response {"success":true}"#,
        )
        .await;
        let r = c
            .ok(
                "host.request",
                json!({"extensionId": "acme.early", "type": "echo", "payload": [1]}),
            )
            .await;
        assert_eq!(r, json!([1]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_never_ready_uses_up_its_budget() {
    timed(async {
        let d = Daemon::start();
        let mut sub = d.client().await;
        sub.ok("host.subscribe", json!({"extensionIds": ["acme.never"]}))
            .await;
        let mut c = d.client().await;
        let mut p = start_params(&d, "acme.never", "ipc-host.js", &[]);
        p["env"]["IPC_HOST_MODE"] = json!("never-ready");
        p["readyTimeoutMs"] = json!(200);
        // Stable after 50 ms: before this fix, that gave the budget back
        // and the host restarted forever.
        p["restart"] = json!({"maxAttempts": 2, "backoffMs": 20, "stableAfterMs": 50});
        c.ok("host.start", p).await;
        let events = sub.events_until(S10, |e| e["to"] == "crashed").await;
        let last = events.last().unwrap();
        assert_eq!(
            last["reason"], "restart budget exhausted: not ready within 200 ms",
            "{last}"
        );
        let spawns = events.iter().filter(|e| e["to"] == "running").count();
        assert_eq!(spawns, 3, "the first run and two restarts");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_frame_is_skipped_and_counted_and_the_channel_lives() {
    timed(async {
        let d = Daemon::start_with(DaemonOpts {
            config: Some("ipc_max_message_bytes = 65536\n".into()),
            ..Default::default()
        });
        let mut c = d.client().await;
        let mut editor = d.client().await;
        editor
            .ok(
                "host.subscribeMessages",
                json!({"extensionIds": ["acme.big"]}),
            )
            .await;
        let mut p = start_params(&d, "acme.big", "ipc-host.js", &[]);
        p["env"]["IPC_HOST_MODE"] = json!("oversize-frame");
        p["waitReady"] = json!(true);
        c.ok("host.start", p).await;
        // The request sent after the 100 KB frame arrives intact.
        let n = tokio::time::timeout(S10, editor.notifications.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n["params"]["result"]["type"], "after-oversize", "{n}");
        let u = c.ok("host.usage", json!({"extensionId": "acme.big"})).await;
        assert_eq!(u["ipc"]["oversizeFrames"], 1, "{u}");
        let st = c
            .ok("host.status", json!({"extensionId": "acme.big"}))
            .await;
        assert_eq!(st["state"], "running");
        assert_eq!(st["generation"], 1);
        assert!(
            d.log_text()
                .contains("skipped an IPC frame over the size limit")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_refused_at_once_and_counted() {
    timed(async {
        let d = Daemon::start_with(DaemonOpts {
            config: Some("host_request_queue_max = 2\n".into()),
            ..Default::default()
        });
        let mut c = d.client().await;
        let mut p = start_params(&d, "acme.flood", "ipc-host.js", &[]);
        p["env"]["IPC_HOST_MODE"] = json!("flood");
        p["env"]["IPC_HOST_FLOOD_N"] = json!("5");
        c.ok("host.start", p).await;
        wait_for_output(&mut c, "acme.flood", "flooded 5").await;
        let deadline = Instant::now() + S10;
        loop {
            let out = c
                .ok(
                    "host.logs",
                    json!({"extensionId": "acme.flood", "lines": 100}),
                )
                .await;
            let refused = out["lines"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|l| {
                    l["text"]
                        .as_str()
                        .unwrap()
                        .starts_with("got reply window-show-message-error")
                })
                .count();
            if refused == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "refusals: {out}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let u = c
            .ok("host.usage", json!({"extensionId": "acme.flood"}))
            .await;
        assert_eq!(u["ipc"]["hostRequestsRefused"], 3, "{u}");
        assert_eq!(u["waitingRequests"], 2, "{u}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pretty_printed_host_json_never_breaks_an_editors_line() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let mut p = start_params(&d, "acme.pretty", "ipc-host.js", &[]);
        p["waitReady"] = json!(true);
        c.ok("host.start", p).await;
        let mut raw = RawConn::connect(&d.socket).await;
        raw.send(
            br#"{"jsonrpc":"2.0","id":1,"method":"host.request","params":{"extensionId":"acme.pretty","type":"pretty"}}
"#,
        )
        .await;
        // `line` asserts one newline-terminated line of valid JSON.
        let v = raw.line().await;
        assert_eq!(v["id"], 1);
        assert_eq!(v["result"][0]["params"]["forged"], true, "{v}");
        // Nothing else arrives: no forged notification line.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), raw.line())
                .await
                .is_err(),
            "an extra line reached the editor"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commented_example_host_works_as_documented() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let entry = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/minimal-host.js");
        let st = c
            .ok(
                "host.start",
                json!({"extensionId": "my.ext", "entry": entry, "env": d.entry_env(),
                       "waitReady": true}),
            )
            .await;
        assert_eq!(st["ready"], true);
        let r = c
            .ok(
                "host.request",
                json!({"extensionId": "my.ext", "type": "echo", "payload": {"hi": 1}}),
            )
            .await;
        assert_eq!(r, json!({"hi": 1}));
        wait_for_output(
            &mut c,
            "my.ext",
            r#"daemon replied: extension-host-ready-response {"success":true}"#,
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_costs_at_most_the_queue_cap() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let before = rss_kib(d.pid());
        // 256 requests of 2 MiB to editors, none attached: 512 MiB offered.
        let mut p = start_params(&d, "acme.flood", "ipc-host.js", &[]);
        p["env"]["IPC_HOST_MODE"] = json!("flood");
        p["env"]["IPC_HOST_FLOOD_N"] = json!("256");
        p["env"]["IPC_HOST_FLOOD_BYTES"] = json!((2 << 20).to_string());
        c.ok("host.start", p).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let u = loop {
            let u = c
                .ok("host.usage", json!({"extensionId": "acme.flood"}))
                .await;
            if u["ipc"]["hostRequests"] == 256 {
                break u;
            }
            assert!(Instant::now() < deadline, "{u}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let after = rss_kib(d.pid());
        let grew = after.saturating_sub(before) / 1024;
        eprintln!(
            "daemon RSS {before} KiB -> {after} KiB; {} waiting ({} bytes), {} refused",
            u["waitingRequests"], u["waitingRequestBytes"], u["ipc"]["hostRequestsRefused"]
        );
        // The default cap is 64 MiB of waiting requests.
        assert!(
            u["waitingRequestBytes"].as_u64().unwrap() <= 64 << 20,
            "{u}"
        );
        assert!(
            u["ipc"]["hostRequestsRefused"].as_u64().unwrap() > 200,
            "{u}"
        );
        assert!(grew <= 64 + 16, "the daemon grew {grew} MiB");
    })
    .await;
}
