//! `dscode-hostctl` against a real daemon: tables, --json, exit codes.

// Drives real processes with Unix signals, sockets and /proc.
#![cfg(unix)]

mod common;
mod fake_server;

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

/// `dscode-hostctl --socket SOCKET ARGS…`, run to completion.
fn ctl_at(socket: &std::path::Path, args: &[&str]) -> Output {
    Command::new(hostctl_bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("DSCODE_HOSTD_SOCKET")
        .output()
        .unwrap()
}

/// The escape sequences `terminal-escapes.js` prints, as bytes.
const CLIPBOARD: &[u8] = b"\x1b]52;c;ZXZpbA==\x07";
const TITLE: &[u8] = b"\x1b]0;title\x07";
const RED: &[u8] = b"\x1b[31m";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// No byte of a terminal control sequence: no C0 control but tab and
/// newline, no DEL, and no C1 control (U+0080–U+009F, `C2 80`–`C2 9F` in
/// UTF-8).
fn assert_terminal_safe(what: &str, out: &[u8]) {
    for (i, b) in out.iter().enumerate() {
        let c1 = *b == 0xc2 && out.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n));
        assert!(
            !((*b < 0x20 && *b != b'\t' && *b != b'\n') || *b == 0x7f || c1),
            "{what}: raw control byte {b:#04x} at {i} in {:?}",
            text(out)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_sequences_from_a_host_never_reach_the_terminal() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        c.ok(
            "host.start",
            start_params(&d, "acme.esc", "terminal-escapes.js", &[]),
        )
        .await;
        wait_for_output(&mut c, "acme.esc", "escapes done").await;
        wait_for_output(&mut c, "acme.esc", "err").await;

        // `logs`: escaped, one visible `\xNN` per control character.
        let out = ctl(&d, &["logs", "acme.esc", "-n", "100"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_terminal_safe("logs", &out.stdout);
        let shown = text(&out.stdout);
        for line in [
            r"clip \x1b]52;c;ZXZpbA==\x07 end",
            r"title \x1b]0;title\x07 end",
            r"\x1b[31mred\x1b[0m plain",
            r"c1 \x9b31m del \x7f bs \x08 end",
            r"[stderr] \x1b[31merr\x1b[0m",
        ] {
            assert!(shown.lines().any(|l| l == line), "no {line:?} in {shown}");
        }

        // `--raw`: exactly what the host wrote.
        let raw = ctl(&d, &["logs", "acme.esc", "-n", "100", "--raw"]);
        assert_eq!(raw.status.code(), Some(0));
        for seq in [
            CLIPBOARD,
            TITLE,
            RED,
            "\u{9b}31m".as_bytes(),
            b"\x7f",
            b"\x08",
        ] {
            assert!(contains(&raw.stdout, seq), "--raw lacks {seq:?}");
        }
        assert!(contains(&raw.stdout, b"clip \x1b]52;c;ZXZpbA==\x07 end\n"));

        // `--json`: exact JSON, the text unchanged once decoded.
        let json_out = ctl(&d, &["--json", "logs", "acme.esc", "-n", "100"]);
        let v: Value = serde_json::from_slice(&json_out.stdout).unwrap();
        let texts: Vec<&str> = v["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["text"].as_str())
            .collect();
        assert!(
            texts.contains(&"clip \u{1b}]52;c;ZXZpbA==\u{7} end"),
            "{texts:?}"
        );
        assert!(
            texts.contains(&"c1 \u{9b}31m del \u{7f} bs \u{8} end"),
            "{texts:?}"
        );

        // `logs -f`: escaped while following, exact with --raw.
        for raw in [false, true] {
            let mut args = vec!["logs", "acme.esc", "-n", "100", "-f"];
            if raw {
                args.push("--raw");
            }
            let mut follow = Command::new(hostctl_bin())
                .arg("--socket")
                .arg(&d.socket)
                .args(&args)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let out = lines_of(follow.stdout.take().unwrap());
            let seen = read_until(&out, |l| l == "escapes done").join("\n");
            signal(follow.id() as i32, SIGINT);
            assert_eq!(wait_child(follow).await, Some(0));
            if raw {
                assert!(contains(seen.as_bytes(), CLIPBOARD), "{seen:?}");
                assert!(contains(seen.as_bytes(), TITLE), "{seen:?}");
            } else {
                assert_terminal_safe("logs -f", seen.as_bytes());
                assert!(seen.contains(r"\x1b]0;title\x07"), "{seen}");
            }
        }

        // A host-controlled path in `status` (the entry's file name).
        let evil = d.dir.join("evil\x1b]0;title\x07.js");
        std::fs::copy(fixture("terminal-escapes.js"), &evil).unwrap();
        c.ok(
            "host.start",
            json!({"extensionId": "acme.evil", "entry": evil, "env": d.entry_env()}),
        )
        .await;
        let st = ctl(&d, &["status", "acme.evil"]);
        assert_eq!(st.status.code(), Some(0), "{}", text(&st.stderr));
        assert_terminal_safe("status", &st.stdout);
        assert!(text(&st.stdout).contains(r"evil\x1b]0;title\x07.js"));
        for args in [&["list"][..], &["info"], &["status"]] {
            let out = ctl(&d, args);
            assert_eq!(out.status.code(), Some(0));
            assert_terminal_safe(&format!("{args:?}"), &out.stdout);
        }
        c.ok("host.stop", json!({"extensionId": "acme.evil"})).await;
        c.ok("host.stop", json!({"extensionId": "acme.esc"})).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_payloads_and_errors_from_call_are_escaped() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        let mut p = start_params(&d, "acme.ipc", "ipc-host.js", &[]);
        p["waitReady"] = json!(true);
        c.ok("host.start", p).await;

        // A reply payload full of controls: printed as (still valid) JSON
        // with every control as a \u escape; --json is the same value.
        let payload =
            json!({"clip": "\u{1b}]52;c;ZXZpbA==\u{7}", "c1": "\u{9b}31m", "del": "\u{7f}"});
        let params =
            json!({"extensionId": "acme.ipc", "type": "echo", "payload": payload}).to_string();
        let out = ctl(&d, &["call", "host.request", &params]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_terminal_safe("call", &out.stdout);
        let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(shown, payload);
        let exact = ctl(&d, &["--json", "call", "host.request", &params]);
        let exact: Value = serde_json::from_slice(&exact.stdout).unwrap();
        assert_eq!(exact, payload);

        // The host's error message, on stderr: escaped too.
        let params = json!({
            "extensionId": "acme.ipc",
            "type": "fail",
            "payload": {"message": "\u{1b}]52;c;ZXZpbA==\u{7}\u{1b}]0;title\u{7}"},
        })
        .to_string();
        let out = ctl(&d, &["call", "host.request", &params]);
        assert_eq!(out.status.code(), Some(1));
        assert_terminal_safe("call stderr", &out.stderr);
        let err = text(&out.stderr);
        assert!(
            err.contains(r"-32020: \x1b]52;c;ZXZpbA==\x07\x1b]0;title\x07"),
            "{err}"
        );
        c.ok("host.stop", json!({"extensionId": "acme.ipc"})).await;
    })
    .await;
}

/// A pipe whose reader is already gone: every write to it fails with EPIPE.
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_every_command_quietly() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        c.ok(
            "host.start",
            start_params(&d, "acme.lines", "print-lines.js", &["1000"]),
        )
        .await;
        wait_for_output(&mut c, "acme.lines", "line 1000").await;
        let commands: [&[&str]; 9] = [
            &["logs", "acme.lines", "-n", "1000"],
            &["logs", "acme.lines", "-n", "1000", "-f"],
            &["watch"],
            &["--json", "watch"],
            &["list"],
            &["status", "acme.lines"],
            &["info"],
            &["call", "daemon.info"],
            &["--help"],
        ];
        for args in commands {
            let child = Command::new(hostctl_bin())
                .arg("--socket")
                .arg(&d.socket)
                .args(args)
                .env("RUST_BACKTRACE", "1")
                .stdout(closed_pipe())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let out = tokio::task::spawn_blocking(move || child.wait_with_output())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
            assert!(out.stderr.is_empty(), "{args:?}: {}", text(&out.stderr));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_into_head_exits_quietly() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        // 1000 lines of 300 bytes: far more than a pipe holds, so hostctl is
        // still writing when `head` leaves.
        c.ok(
            "host.start",
            start_params(&d, "acme.wide", "terminal-escapes.js", &["1000", "300"]),
        )
        .await;
        wait_for_output(&mut c, "acme.wide", "escapes done").await;
        let err = d.dir.join("hostctl.err");
        let rc = d.dir.join("hostctl.rc");
        let out = Command::new("sh")
            .arg("-c")
            .arg(r#"{ "$HOSTCTL" --socket "$SOCK" logs acme.wide -n 1000 2>"$ERR"; echo $? >"$RC"; } | head -1"#)
            .env("HOSTCTL", hostctl_bin())
            .env("SOCK", &d.socket)
            .env("ERR", &err)
            .env("RC", &rc)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        assert_eq!(text(&out.stdout).lines().count(), 1, "{out:?}");
        assert_eq!(std::fs::read_to_string(&rc).unwrap().trim(), "0");
        assert_eq!(std::fs::read_to_string(&err).unwrap(), "");
        c.ok("host.stop", json!({"extensionId": "acme.wide"})).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_leaves_when_its_reader_does() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        c.ok(
            "host.start",
            start_params(&d, "acme.quiet", "print-lines.js", &["1"]),
        )
        .await;
        wait_for_output(&mut c, "acme.quiet", "line 1").await;
        // `watch | head -1` and `logs -f | head -1`, with nothing more to
        // print after the first line: they end when head does.
        for args in [&["watch"][..], &["logs", "acme.quiet", "-n", "1", "-f"]] {
            let mut p = Command::new(hostctl_bin())
                .arg("--socket")
                .arg(&d.socket)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let stdout = p.stdout.take().unwrap();
            let first = tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).unwrap();
                line // the reader is dropped here, as head exits
            })
            .await
            .unwrap();
            assert!(first.ends_with('\n'), "{args:?}: {first:?}");
            let out = tokio::task::spawn_blocking(move || p.wait_with_output())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
            assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
        }
        c.ok("host.stop", json!({"extensionId": "acme.quiet"}))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_times_out_with_exit_3() {
    timed(async {
        let dir = fake_server::private_dir();
        let socket = dir.path().join("silent.sock");
        let _conns = fake_server::silent_server(&socket);
        for args in [
            &["--timeout", "1s", "list"][..],
            &["--timeout", "1s", "watch"],
        ] {
            let started = std::time::Instant::now();
            let out = tokio::task::spawn_blocking({
                let socket = socket.clone();
                let args = args.to_vec();
                move || ctl_at(&socket, &args)
            })
            .await
            .unwrap();
            let took = started.elapsed();
            assert_eq!(out.status.code(), Some(3), "{args:?}: {out:?}");
            assert!(took < Duration::from_secs(5), "{args:?} took {took:?}");
            let err = text(&out.stderr);
            assert!(
                err.contains("no reply to host.") && err.contains("within 1s"),
                "{err}"
            );
        }
        // A bad duration is a usage error.
        assert_eq!(
            ctl_at(&socket, &["--timeout", "soon", "list"])
                .status
                .code(),
            Some(2)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reports_a_daemon_that_died() {
    timed(async {
        let mut d = Daemon::start();
        let mut c = d.client().await;
        c.ok(
            "host.start",
            start_params(&d, "acme.seen", "print-lines.js", &["1"]),
        )
        .await;
        wait_for_output(&mut c, "acme.seen", "line 1").await;
        let mut follow = Command::new(hostctl_bin())
            .arg("--socket")
            .arg(&d.socket)
            .args(["logs", "acme.seen", "-n", "1", "-f"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let fout = lines_of(follow.stdout.take().unwrap());
        // The tail comes with the subscription: the follower is attached.
        read_until(&fout, |_| true);
        signal(d.pid(), SIGKILL);
        d.wait_exit(Duration::from_secs(10)).await;
        let out = tokio::task::spawn_blocking(move || follow.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert!(
            text(&out.stderr).contains("the daemon closed the connection"),
            "{}",
            text(&out.stderr)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_reply_line_is_cut_off_not_buffered() {
    timed(async {
        let dir = fake_server::private_dir();
        let socket = dir.path().join("flood.sock");
        let written = fake_server::flooding_server(&socket, 120 << 20);
        let mut child = Command::new(hostctl_bin())
            .arg("--socket")
            .arg(&socket)
            .args(["--timeout", "60s", "list"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (code, peak) = tokio::task::spawn_blocking(move || {
            fake_server::wait_with_peak_rss(child, Duration::from_secs(60))
        })
        .await
        .unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
        assert_eq!(code, Some(3), "{err}");
        assert!(err.contains("longer than 67108864 bytes"), "{err}");
        // At most the 64 MiB limit (and the process itself) was held, not
        // the 120 MiB line.
        eprintln!("peak RSS of hostctl: {} MiB", peak >> 20);
        assert!(peak < 100 << 20, "peak RSS {} MiB", peak >> 20);
        let sent = written.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(sent < 120 << 20, "the client read all {sent} bytes");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_in_a_directory_others_can_write_is_refused() {
    timed(async {
        let dir = fake_server::private_dir();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        fake_server::set_mode(&open, 0o755);
        let socket = open.join("hostd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let out = ctl_at(&socket, &["list"]);
        assert_eq!(out.status.code(), Some(3));
        let err = text(&out.stderr);
        let uid = nix::unistd::geteuid().as_raw();
        for part in [
            format!("refusing to connect to {}", socket.display()),
            format!(
                "its directory {} is accessible to group or others",
                open.display()
            ),
            format!("owner uid {uid}, mode 0755"),
            format!("chmod 700 {}", open.display()),
        ] {
            assert!(err.contains(&part), "no {part:?} in {err}");
        }
        assert!(
            fake_server::pending_connection(&listener).is_none(),
            "the client connected"
        );

        // A symlink in a private directory does not launder it.
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&socket, &link).unwrap();
        let out = ctl_at(&link, &["list"]);
        assert_eq!(out.status.code(), Some(3));
        assert!(
            text(&out.stderr).contains("mode 0755"),
            "{}",
            text(&out.stderr)
        );
        assert!(fake_server::pending_connection(&listener).is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_socket_or_listener_is_refused() {
    timed(async {
        if !fake_server::is_root() {
            eprintln!(
                "NOT RUN: the other-user cases need root to chown and setuid (CI runs as root); \
                 the directory-mode case runs unprivileged"
            );
            return;
        }
        let other = fake_server::OTHER_UID;
        // A 0700 directory, but another user's.
        let dir = fake_server::private_dir();
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        fake_server::set_mode(&theirs, 0o700);
        let socket = theirs.join("hostd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        std::os::unix::fs::chown(&theirs, Some(other), Some(other)).unwrap();
        let out = ctl_at(&socket, &["list"]);
        assert_eq!(out.status.code(), Some(3));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!(
                "its directory {} is owned by another user (owner uid {other}, mode 0700)",
                theirs.display()
            )),
            "{err}"
        );
        assert!(fake_server::pending_connection(&listener).is_none());

        // Our own private directory, but the listener is another user's.
        let socket = dir.path().join("impostor.sock");
        let listener = fake_server::listener_of_another_uid(&socket, other);
        let out = ctl_at(&socket, &["list"]);
        assert_eq!(out.status.code(), Some(3));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("the process listening on it runs as uid {other}")),
            "{err}"
        );
        let sent = fake_server::pending_connection(&listener).expect("no connection");
        assert!(sent.is_empty(), "the client sent {:?}", text(&sent));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_socket_in_a_private_directory_works() {
    timed(async {
        let d = Daemon::start();
        let dir = fake_server::private_dir();
        let fwd = dir.path().join("fwd.sock");
        fake_server::forwarder(&fwd, d.socket.clone());
        let out = ctl_at(&fwd, &["--json", "list"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["hosts"].is_array());
    })
    .await;
}

/// Kills a helper process when the test ends, passing or failing.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Remote development, with socat standing in for `ssh -L local:remote`
/// (README, "Remote development"): the CLI reaches the daemon through a
/// forwarded socket in a private directory; the daemon sees the forwarder's
/// uid (ours), so its peer check holds on its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socat_forwarded_socket_reaches_the_daemon() {
    timed(async {
        let socat = which::which("socat")
            .expect("socat is required by this test; .ci/run installs it (apt-get install socat)");
        let d = Daemon::start();
        let dir = fake_server::private_dir();
        let fwd = dir.path().join("hostd.sock");
        let _socat = KillOnDrop(
            Command::new(socat)
                .arg(format!("UNIX-LISTEN:{},fork,mode=600", fwd.display()))
                .arg(format!("UNIX-CONNECT:{}", d.socket.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for_file(&fwd).await;
        let out = ctl_at(&fwd, &["--json", "info"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        // The daemon at the far end answered, about its own socket.
        assert_eq!(v["pid"], d.pid(), "{v}");
        assert_eq!(v["socket"], d.socket.display().to_string(), "{v}");
        // A second call through the same forwarder (socat forks per
        // connection, as sshd does per channel).
        let out = ctl_at(&fwd, &["list"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    })
    .await;
}
