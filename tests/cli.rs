//! `dscode-hostctl` against a real daemon: tables, --json, exit codes.

// Drives real processes with Unix signals, sockets and /proc.
#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn hostctl_bin() -> &'static str {
    env!("CARGO_BIN_EXE_dscode-hostctl")
}

fn ctl(d: &Daemon, args: &[&str]) -> Output {
    Command::new(hostctl_bin())
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .env_remove("DSCODE_HOSTD_SOCKET")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(d: &Daemon, args: &[&str]) -> String {
    let out = ctl(d, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_json_and_the_session_commands() {
    timed(async {
        let d = Daemon::start();
        let marker = format!("HOSTD_TEST_MARKER={}", d.marker);
        let out_file = d.dir.join("env.json");
        let entry = fixture("dump-env.js");
        let started = ok(
            &d,
            &[
                "start",
                "acme.env",
                &entry,
                "--env",
                &marker,
                "--env",
                "X=1",
                "--",
                out_file.to_str().unwrap(),
            ],
        );
        assert!(started.starts_with("EXTENSION"), "{started}");
        assert!(
            started.contains("acme.env") && started.contains("running"),
            "{started}"
        );
        ok(
            &d,
            &[
                "start",
                "acme.lines",
                &fixture("print-lines.js"),
                "--env",
                &marker,
                "--memory-max-mb",
                "300",
                "--",
                "3",
            ],
        );
        let lines_status = ok(&d, &["status", "acme.lines"]);
        assert!(
            lines_status.contains("memory max   300 MiB"),
            "{lines_status}"
        );
        // What it uses now, as `systemctl status` shows it.
        assert!(lines_status.contains("processes    1"), "{lines_status}");
        assert!(
            lines_status.contains(" MiB\n") && lines_status.contains("cpu "),
            "{lines_status}"
        );
        ok(
            &d,
            &[
                "start",
                "acme.crash",
                &fixture("crash-after.js"),
                "--env",
                &marker,
                "--",
                "10",
                "3",
            ],
        );

        // The table: header and one aligned row per host, sorted.
        let mut c = d.client().await;
        let mut sub = d.client().await;
        sub.ok("host.subscribe", json!({"extensionIds": ["acme.crash"]}))
            .await;
        let list = ok(&d, &["list"]);
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(lines.len(), 4, "{list}");
        let header = lines[0];
        for col in [
            "EXTENSION",
            "STATE",
            "PID",
            "UPTIME",
            "RESTARTS",
            "LAST EXIT",
        ] {
            assert!(header.contains(col), "{header}");
        }
        let state_col = header.find("STATE").unwrap();
        for row in &lines[1..] {
            assert!(row.len() > state_col, "{row}");
            assert_ne!(&row[state_col - 1..state_col], "x", "misaligned: {row}");
        }
        assert!(
            lines[1].starts_with("acme.crash")
                && lines[2].starts_with("acme.env")
                && lines[3].starts_with("acme.lines")
        );

        // --json before or after the subcommand.
        let v: Value = serde_json::from_str(&ok(&d, &["--json", "list"])).unwrap();
        assert_eq!(v["hosts"].as_array().unwrap().len(), 3);
        let v: Value = serde_json::from_str(&ok(&d, &["status", "acme.env", "--json"])).unwrap();
        assert_eq!(v["state"], "running");

        // The crashing host ends up with its exit shown as "code 3".
        sub.events_until(Duration::from_secs(30), |e| e["to"] == "restarting")
            .await;
        let st = ok(&d, &["status", "acme.crash"]);
        assert!(st.contains("code 3"), "{st}");
        assert!(st.contains("budget"), "{st}");

        // Logs, with -n.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let logs = ok(&d, &["logs", "acme.lines", "-n", "10"]);
            if logs.contains("[stderr] to stderr") && logs.contains("line 3") {
                assert_eq!(logs.lines().count(), 4, "{logs}");
                assert_eq!(
                    ok(&d, &["logs", "acme.lines", "-n", "2"]).lines().count(),
                    2
                );
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no logs: {logs}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let stopped = ok(&d, &["stop", "acme.lines", "--timeout", "2000"]);
        assert!(
            stopped.contains("stopped") && stopped.contains("SIGTERM"),
            "{stopped}"
        );
        let restarted = ok(&d, &["restart", "acme.env"]);
        assert!(restarted.contains("running"), "{restarted}");
        assert_eq!(
            ok(&d, &["remove", "acme.lines"]).trim(),
            "removed acme.lines"
        );
        let info = ok(&d, &["info"]);
        assert!(
            info.contains(env!("CARGO_PKG_VERSION")) && info.contains("hosts"),
            "{info}"
        );
        let called: Value = serde_json::from_str(&ok(
            &d,
            &[
                "--json",
                "call",
                "host.status",
                r#"{"extensionId":"acme.env"}"#,
            ],
        ))
        .unwrap();
        assert_eq!(called["extensionId"], "acme.env");
        c.ok("host.stop", json!({"extensionId": "acme.env"})).await;
        c.ok("host.stop", json!({"extensionId": "acme.crash"}))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes() {
    timed(async {
        let d = Daemon::start();
        // 1: the daemon returned an error, with its code and message.
        let out = ctl(&d, &["status", "ghost"]);
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(err.contains("-32001") && err.contains("ghost"), "{err}");
        // 2: usage.
        assert_eq!(ctl(&d, &["bogus"]).status.code(), Some(2));
        assert_eq!(ctl(&d, &["start", "only-id"]).status.code(), Some(2));
        assert_eq!(
            ctl(&d, &["start", "a", "/x.js", "--env", "NOEQUALS"])
                .status
                .code(),
            Some(2)
        );
        assert_eq!(
            ctl(&d, &["call", "daemon.info", "{not json"]).status.code(),
            Some(2)
        );
        // 3: cannot connect; the message names the socket and the fix.
        let missing = d.dir.join("run/nope.sock");
        let out = Command::new(hostctl_bin())
            .arg("--socket")
            .arg(&missing)
            .arg("list")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        let err = text(&out.stderr);
        assert!(err.contains(missing.to_str().unwrap()), "{err}");
        assert!(err.contains("dscode-hostd"), "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_has_an_example_for_every_subcommand() {
    timed(async {
        let out = Command::new(hostctl_bin()).arg("--help").output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert!(text(&out.stdout).contains("Example:"));
        for sub in [
            "info", "list", "status", "start", "stop", "restart", "remove", "logs", "watch",
            "shutdown", "reload", "call",
        ] {
            let out = Command::new(hostctl_bin())
                .args([sub, "--help"])
                .output()
                .unwrap();
            let help = text(&out.stdout);
            assert!(
                help.contains("Example: dscode-hostctl"),
                "{sub} --help lacks an example:\n{help}"
            );
        }
    })
    .await;
}

/// Wait for a child process, at most 10 s.
async fn wait_child(mut p: std::process::Child) -> Option<i32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = p.try_wait().unwrap() {
            return s.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = p.kill();
            panic!("hostctl {} did not exit within 10 s", p.id());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The stdout lines of a running hostctl, read on a thread.
fn lines_of(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Lines until one satisfies `pred`, each within 10 s.
fn read_until(rx: &std::sync::mpsc::Receiver<String>, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("no matching line ({e}); saw {seen:?}"));
        let done = pred(&line);
        seen.push(line);
        if done {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_and_follow_stream_until_interrupted() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        c.ok(
            "host.start",
            start_params(&d, "acme.chatty", "print-lines.js", &["2"]),
        )
        .await;
        let mut watch = Command::new(hostctl_bin())
            .arg("--socket")
            .arg(&d.socket)
            .args(["watch", "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let wout = lines_of(watch.stdout.take().unwrap());
        let first = read_until(&wout, |_| true);
        let snap: Value = serde_json::from_str(&first[0]).unwrap();
        assert_eq!(snap["kind"], "snapshot");
        c.ok("host.stop", json!({"extensionId": "acme.chatty"}))
            .await;
        let seen = read_until(&wout, |l| l.contains("\"to\":\"stopped\""));
        let last: Value = serde_json::from_str(seen.last().unwrap()).unwrap();
        assert_eq!(last["from"], "stopping");

        c.ok("host.start", json!({"extensionId": "acme.chatty"}))
            .await;
        // All of this run's output is in (stdout and stderr are two pipes:
        // either may come last).
        wait_for_output(&mut c, "acme.chatty", "line 2").await;
        wait_for_output(&mut c, "acme.chatty", "to stderr").await;
        let mut follow = Command::new(hostctl_bin())
            .arg("--socket")
            .arg(&d.socket)
            .args(["logs", "acme.chatty", "-n", "1", "-f"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let fout = lines_of(follow.stdout.take().unwrap());
        // The tail comes with the subscription, so seeing it means the
        // follower is attached; then the host is restarted and prints again.
        read_until(&fout, |_| true);
        c.ok("host.restart", json!({"extensionId": "acme.chatty"}))
            .await;
        read_until(&fout, |l| l.starts_with("line 2"));

        for p in [watch, follow] {
            signal(p.id() as i32, SIGINT);
            assert_eq!(wait_child(p).await, Some(0));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_a_daemon_that_goes_away() {
    timed(async {
        let mut d = Daemon::start();
        // A host, so that the watcher prints its snapshot once subscribed.
        let mut c = d.client().await;
        c.ok(
            "host.start",
            start_params(&d, "acme.seen", "print-lines.js", &["1"]),
        )
        .await;
        let mut watch = Command::new(hostctl_bin())
            .arg("--socket")
            .arg(&d.socket)
            .arg("watch")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Shut down only once the watcher is attached.
        let wout = lines_of(watch.stdout.take().unwrap());
        read_until(&wout, |l| l.contains("acme.seen"));
        assert_eq!(
            ok(&d, &["shutdown"]).trim(),
            "dscode-hostd is shutting down"
        );
        assert_eq!(d.wait_exit(Duration::from_secs(10)).await.code(), Some(0));
        // The watcher is told, not left hanging.
        let mut stderr = watch.stderr.take().unwrap();
        assert_eq!(wait_child(watch).await, Some(3));
        let mut err = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
        assert!(err.contains("closed the connection"), "{err}");
    })
    .await;
}
