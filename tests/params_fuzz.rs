//! Random `host.start` params against the real daemon: every request gets a
//! JSON-RPC answer, nothing panics, and the daemon keeps answering.

// Drives a real daemon over its Unix socket.
#![cfg(unix)]

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

/// Numbers that break naive arithmetic: huge, negative, fractional, 0.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(3e14)),
        Just(json!(1e300)),
        Just(json!(0.5)),
        (0u64..100_000).prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
    ]
}

/// Strings with NULs, control characters, long runs, path tricks.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z.]{1,12}",
        Just("a\0b".to_string()),
        Just("../../etc".to_string()),
        Just("x".repeat(129)),
        Just("x".repeat(5000)),
        Just("é\u{1b}[31m".to_string()),
        ".{0,40}",
    ]
}

/// Any JSON, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn start_params(entry: String) -> impl Strategy<Value = Value> {
    let field = |name: &'static str, s: BoxedStrategy<Value>| {
        prop::option::weighted(0.2, s).prop_map(move |v| (name, v))
    };
    let num = || number().boxed();
    (
        prop_oneof![
            4 => "[a-z]{1,8}\\.[a-z]{1,8}".prop_map(Value::from),
            1 => text().prop_map(Value::from),
            1 => any_json(),
        ],
        prop_oneof![4 => Just(Value::from(entry)), 1 => text().prop_map(Value::from)],
        (
            field(
                "restart",
                prop::collection::btree_map(
                    prop_oneof![
                        Just("backoffMs".to_string()),
                        Just("maxBackoffMs".to_string()),
                        Just("stableAfterMs".to_string()),
                        Just("maxAttempts".to_string())
                    ],
                    number(),
                    0..4,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect()))
                .boxed(),
            ),
            field("stopTimeoutMs", num()),
            field("readyTimeoutMs", num()),
            field("heartbeatIntervalMs", num()),
            field("memoryMaxMb", num()),
            field("cpuMaxPercent", num()),
            field(
                "args",
                prop_oneof![
                    prop::collection::vec(text().prop_map(Value::from), 0..3).prop_map(Value::from),
                    any_json()
                ]
                .boxed(),
            ),
            field("env", any_json().boxed()),
            field("staticAnswers", any_json().boxed()),
            field("extensionsDir", text().prop_map(Value::from).boxed()),
        ),
    )
        .prop_map(|(id, entry, fields)| {
            let mut p = json!({"extensionId": id, "entry": entry, "readyTimeoutMs": 0});
            let (a, b, c, d, e, f, g, h, i, j) = fields;
            for (name, v) in [a, b, c, d, e, f, g, h, i, j] {
                if let Some(v) = v {
                    p[name] = v;
                }
            }
            p
        })
}

#[test]
fn random_start_params_always_get_an_answer_and_never_a_panic() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let d = Daemon::start();
    let c = tokio::sync::Mutex::new(rt.block_on(d.client()));
    // First the known-dangerous corners, each started, left to exit and
    // restart, then stopped: every one must be refused with -32602.
    let entry = fixture("crash-after.js");
    let max = json!(u64::MAX);
    let corners = [
        json!({"restart": {"backoffMs": max, "maxBackoffMs": max}}),
        json!({"restart": {"backoffMs": 300_000_000_000_000u64, "maxBackoffMs": 300_000_000_000_000u64}}),
        json!({"restart": {"stableAfterMs": max}}),
        json!({"stopTimeoutMs": max}),
        json!({"readyTimeoutMs": max}),
        json!({"heartbeatIntervalMs": max}),
        json!({"memoryMaxMb": max}),
        json!({"cpuMaxPercent": u32::MAX}),
        json!({"args": ["a\0b"]}),
        json!({"extensionId": "x".repeat(129)}),
    ];
    for (i, corner) in corners.iter().enumerate() {
        let mut p =
            json!({"extensionId": format!("corner.c{i}"), "entry": entry, "readyTimeoutMs": 0});
        for (k, v) in corner.as_object().unwrap() {
            p[k] = v.clone();
        }
        let e = rt.block_on(async { c.lock().await.err("host.start", p.clone()).await });
        assert_eq!(e.code, -32602, "{p}: {e:?}");
    }
    let e = rt.block_on(async {
        let mut c = c.lock().await;
        c.ok("host.start", json!({"extensionId": "corner.stop", "entry": fixture("print-lines.js"), "args": ["1000000"], "readyTimeoutMs": 0})).await;
        c.err("host.stop", json!({"extensionId": "corner.stop", "timeoutMs": u64::MAX})).await
    });
    assert_eq!(e.code, -32602, "{e:?}");
    rt.block_on(async {
        c.lock()
            .await
            .ok("host.stop", json!({"extensionId": "corner.stop"}))
            .await
    });

    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let entry = fixture("crash-after.js");
    let successes = std::cell::Cell::new(0u32);
    let result = runner.run(&start_params(entry), |params| {
        let started = params["extensionId"].as_str().map(String::from);
        let reply = rt.block_on(async {
            let mut c = c.lock().await;
            tokio::time::timeout(
                std::time::Duration::from_secs(20),
                c.call("host.start", params.clone()),
            )
            .await
        });
        let reply = reply.map_err(|_| TestCaseError::fail(format!("no answer to {params}")))?;
        if let Err(e) = &reply {
            prop_assert!(
                [-32602, -32002, -32003, -32004].contains(&e.code),
                "unexpected error {e:?} for {params}"
            );
        }
        if let (Ok(_), Some(id)) = (&reply, started) {
            // The fixture exits at once: let its exit schedule a restart with
            // whatever backoff the case asked for.
            rt.block_on(async {
                let mut c = c.lock().await;
                for _ in 0..200 {
                    let st = c.ok("host.status", json!({"extensionId": id})).await;
                    if st["state"] != "running" {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            });
            successes.set(successes.get() + 1);
            // Leave nothing running between cases.
            rt.block_on(async {
                c.lock()
                    .await
                    .call("host.stop", json!({"extensionId": id}))
                    .await
            })
            .map_err(|e| TestCaseError::fail(format!("stop {id}: {e:?}")))?;
        }
        Ok(())
    });
    result.unwrap();
    assert!(
        successes.get() >= 10,
        "only {} valid starts: the strategy is too hostile to reach the restart path",
        successes.get()
    );
    let info = rt.block_on(async { c.lock().await.ok("daemon.info", json!({})).await });
    assert!(info["pid"].is_u64(), "{info}");
    let log = d.log_text();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}
