//! The daemon process: shutdown, single instance, stale socket, permissions.

// Drives real processes with Unix signals, sockets and /proc.
#![cfg(unix)]

mod common;
mod launch;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_host_removes_the_socket_and_exits_0() {
    timed(async {
        let mut d = Daemon::start();
        let mut c = d.client().await;
        let mut pids = Vec::new();
        for (id, fx) in [
            ("acme.a", "print-lines.js"),
            ("acme.b", "fork-grandchild.js"),
            ("acme.c", "ignore-sigterm.js"),
        ] {
            let mut p = start_params(&d, id, fx, &[]);
            p["stopTimeoutMs"] = json!(500);
            pids.push(c.ok("host.start", p).await["pid"].as_i64().unwrap() as i32);
        }
        eventually(Duration::from_secs(10), "grandchild started", || {
            marker_pids(&d.marker).len() >= 5
        })
        .await;
        signal(d.pid(), SIGTERM);
        let status = d.wait_exit(Duration::from_secs(12)).await;
        assert_eq!(status.code(), Some(0), "{}", d.log_text());
        assert!(!d.socket.exists(), "socket left behind");
        assert_eq!(
            marker_pids(&d.marker),
            Vec::<i32>::new(),
            "hosts left running"
        );
        for pid in pids {
            assert!(!process_alive(pid));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_shutdown_method_replies_then_exits_0() {
    timed(async {
        let mut d = Daemon::start();
        let mut c = d.client().await;
        c.ok(
            "host.start",
            start_params(&d, "acme.a", "print-lines.js", &[]),
        )
        .await;
        assert_eq!(
            c.ok("daemon.shutdown", json!({})).await,
            json!({"ok": true})
        );
        assert_eq!(d.wait_exit(Duration::from_secs(12)).await.code(), Some(0));
        assert!(!d.socket.exists());
        assert_eq!(marker_pids(&d.marker), Vec::<i32>::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_shutdown_get_32005_and_a_second_sigint_kills_at_once() {
    timed(async {
        let mut d = Daemon::start();
        let mut c = d.client().await;
        let mut p = start_params(&d, "acme.stubborn", "ignore-sigterm.js", &[]);
        p["stopTimeoutMs"] = json!(8000);
        c.ok("host.start", p).await;
        // Let node install its SIGTERM handler before the daemon signals it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = c
                .ok("host.logs", json!({"extensionId": "acme.stubborn"}))
                .await;
            if logs["lines"].to_string().contains("ready") {
                break;
            }
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        signal(d.pid(), SIGINT);
        d.wait_for_log("shutting down", Duration::from_secs(5));
        let e = c
            .err(
                "host.start",
                start_params(&d, "acme.late", "print-lines.js", &[]),
            )
            .await;
        assert_eq!(e.code, -32005);
        let st = c
            .ok("host.status", json!({"extensionId": "acme.stubborn"}))
            .await;
        assert_eq!(
            st["state"], "stopping",
            "status still answers during shutdown"
        );
        let t0 = Instant::now();
        signal(d.pid(), SIGINT);
        let status = d.wait_exit(Duration::from_secs(5)).await;
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "second SIGINT did not kill at once"
        );
        assert_eq!(status.code(), Some(0));
        assert_eq!(marker_pids(&d.marker), Vec::<i32>::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_a_live_socket_exits_nonzero() {
    timed(async {
        let d = Daemon::start();
        let mut second = Daemon::spawn(DaemonOpts {
            dir: Some(d.dir.clone()),
            ..Default::default()
        });
        let status = second.wait_exit(Duration::from_secs(10)).await;
        assert_ne!(status.code(), Some(0));
        let log = second.log_text();
        assert!(
            log.contains(d.socket.to_str().unwrap()),
            "message does not name the socket: {log}"
        );
        assert!(log.contains("already running"), "{log}");
        // The first is unharmed.
        d.client().await.ok("daemon.info", json!({})).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_reclaimed() {
    timed(async {
        let mut first = Daemon::start();
        signal(first.pid(), SIGKILL);
        first.wait_exit(Duration::from_secs(5)).await;
        assert!(
            first.socket.exists(),
            "a SIGKILLed daemon leaves its socket"
        );
        let second = Daemon::start_with(DaemonOpts {
            dir: Some(first.dir.clone()),
            ..Default::default()
        });
        assert!(
            second.log_text().contains("reclaimed a stale socket"),
            "{}",
            second.log_text()
        );
        second.client().await.ok("daemon.info", json!({})).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insecure_socket_directory_is_refused_with_the_fix() {
    timed(async {
        let tmp = scratch_dir();
        let run = tmp.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (code, err) = run_daemon_once(tmp.path(), &[]);
        assert_ne!(code, Some(0));
        assert!(err.contains(run.to_str().unwrap()), "{err}");
        assert!(err.contains("chmod 700"), "{err}");
        assert!(!run.join("hostd.sock").exists());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_0600_and_its_directory_0700() {
    timed(async {
        let d = Daemon::start();
        let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(d.socket.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_explicit_config_is_an_error() {
    timed(async {
        let tmp = scratch_dir();
        let missing = tmp.path().join("nope.toml");
        let (code, err) = run_daemon_once(tmp.path(), &["--config".as_ref(), missing.as_os_str()]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("nope.toml"), "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_uid_is_closed_without_a_reply_even_on_a_0666_socket() {
    timed(async {
        let setpriv = which::which("setpriv").expect("setpriv (util-linux) is required for this test");
        let node = require_node();
        let d = Daemon::start();
        // Loosen everything the daemon checked at start-up.
        std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(d.socket.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let script = r#"
            const c = require('net').createConnection(process.argv[1]);
            let got = '';
            c.on('connect', () => c.write('{"jsonrpc":"2.0","id":1,"method":"daemon.info"}\n'));
            c.on('data', d => got += d);
            c.on('error', e => { console.log(['EPIPE', 'ECONNRESET'].includes(e.code) && !got ? 'closed without reply' : 'error ' + e.code); process.exit(0); });
            c.on('close', () => { console.log(got ? 'reply ' + got : 'closed without reply'); process.exit(0); });
            setTimeout(() => { console.log('timeout'); process.exit(0); }, 5000);
        "#;
        let out = tokio::process::Command::new(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(node)
            .arg("-e")
            .arg(script)
            .arg(&d.socket)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.trim(), "closed without reply", "stderr: {}", String::from_utf8_lossy(&out.stderr));
        d.wait_for_log("refused a connection from another user", Duration::from_secs(5));
        // Our own uid still gets in.
        d.client().await.ok("daemon.info", json!({})).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_directory_owned_by_another_user_is_refused() {
    timed(async {
        let tmp = scratch_dir();
        let run = tmp.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(&run, Some(nix::unistd::Uid::from_raw(65534)), None)
            .expect("chown (tests run as root)");
        let (code, err) = run_daemon_once(tmp.path(), &[]);
        assert_ne!(code, Some(0));
        assert!(
            err.contains("owned by uid 65534") && err.contains(run.to_str().unwrap()),
            "{err}"
        );
    })
    .await;
}

/// The signals whose default action would kill the daemon without clean-up
/// and that mean nothing to it, as the README's table lists them.
fn ignored_signals() -> Vec<(i32, String)> {
    #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
    let mut v: Vec<(i32, String)> = [
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGVTALRM, "SIGVTALRM"),
        (libc::SIGPROF, "SIGPROF"),
        (libc::SIGIO, "SIGIO (SIGPOLL)"),
        (libc::SIGXFSZ, "SIGXFSZ"),
    ]
    .into_iter()
    .map(|(n, s)| (n, s.to_string()))
    .collect();
    #[cfg(target_os = "linux")]
    {
        let rtmin = libc::SIGRTMIN();
        let last = libc::SIGRTMAX() - 1;
        v.extend([
            (libc::SIGSTKFLT, "SIGSTKFLT".to_string()),
            (libc::SIGPWR, "SIGPWR".to_string()),
            (rtmin, "SIGRTMIN".to_string()),
            (rtmin + 1, "SIGRTMIN+1".to_string()),
            (last, format!("SIGRTMIN+{}", last - rtmin)),
        ]);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_that_would_kill_the_daemon_are_logged_and_ignored() {
    timed(async {
        let mut d = Daemon::start();
        let mut c = d.client().await;
        c.ok(
            "host.start",
            start_params(&d, "acme.tree", "fork-grandchild.js", &[]),
        )
        .await;
        let grandchild = output_pid(&mut c, "acme.tree", "sleep ").await;
        for (n, name) in ignored_signals() {
            launch::send(d.pid(), n);
            d.wait_for_log(&format!("signal={name}"), Duration::from_secs(5));
            c.ok("daemon.info", json!({})).await;
            assert!(
                process_alive(grandchild),
                "{name} killed the host's grandchild"
            );
        }
        // The last real-time signal has no tokio slot: a silent handler.
        #[cfg(target_os = "linux")]
        {
            launch::send(d.pid(), libc::SIGRTMAX());
            c.ok("daemon.info", json!({})).await;
        }
        // SIGUSR1 reopens the log file (tests/service.rs checks the file).
        launch::send(d.pid(), libc::SIGUSR1);
        d.wait_for_log("reopened the log file", Duration::from_secs(5));
        let mut fresh = d.client().await;
        fresh.ok("daemon.info", json!({})).await;
        assert!(process_alive(grandchild));
        assert!(d.socket.exists());
        assert!(d.child.as_mut().unwrap().try_wait().unwrap().is_none());
        signal(d.pid(), SIGTERM);
        assert_eq!(d.wait_exit(Duration::from_secs(12)).await.code(), Some(0));
        assert!(!process_alive(grandchild));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_and_sigxcpu_shut_down_like_sigterm() {
    timed(async {
        for (n, name) in [(libc::SIGQUIT, "SIGQUIT"), (libc::SIGXCPU, "SIGXCPU")] {
            let mut d = Daemon::start();
            let mut c = d.client().await;
            c.ok(
                "host.start",
                start_params(&d, "acme.tree", "fork-grandchild.js", &[]),
            )
            .await;
            let grandchild = output_pid(&mut c, "acme.tree", "sleep ").await;
            launch::send(d.pid(), n);
            let status = d.wait_exit(Duration::from_secs(12)).await;
            assert_eq!(status.code(), Some(0), "{name}: {}", d.log_text());
            assert!(
                d.log_text().contains(&format!("reason=\"{name}")),
                "{name}: {}",
                d.log_text()
            );
            assert!(!d.socket.exists(), "{name}: socket left behind");
            assert!(!process_alive(grandchild), "{name}: grandchild left");
            assert_eq!(marker_pids(&d.marker), Vec::<i32>::new(), "{name}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_backs_off_when_the_daemon_is_out_of_descriptors() {
    timed(async {
        let (_tmp, dir) = launch::temp_dir();
        let args = launch::args_in(&dir, "");
        let mut d = launch::launch(
            &dir,
            &args,
            &[],
            launch::Setup {
                nofile: Some(64),
                ..Default::default()
            },
        );
        d.wait_for_log("listening", Duration::from_secs(20)).await;
        assert!(d.log_text().contains("limit=64"), "{}", d.log_text());
        let socket = dir.join("run/hostd.sock");
        // More connections than the daemon has descriptors: the rest wait
        // in the backlog, and accepting them fails with EMFILE.
        let mut conns = Vec::new();
        for _ in 0..100 {
            match tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::UnixStream::connect(&socket),
            )
            .await
            {
                Ok(Ok(s)) => conns.push(s),
                // The backlog is full: enough are waiting.
                _ => break,
            }
            if d.count("accept failed") > 0 {
                break;
            }
        }
        d.wait_for_log("accept failed", Duration::from_secs(10))
            .await;
        let before = launch::cpu_ticks(d.pid());
        let t0 = Instant::now();
        // A measurement window, not a wait for an event.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let used = (launch::cpu_ticks(d.pid()) - before) as f64
            / launch::ticks_per_second() as f64
            / t0.elapsed().as_secs_f64();
        eprintln!(
            "CPU while accept fails: {:.1}% of one core; {} warnings; {} connections open",
            used * 100.0,
            d.count("accept failed"),
            conns.len()
        );
        assert!(
            used < 0.5,
            "the accept loop spins: {:.0}% CPU",
            used * 100.0
        );
        assert!(
            d.count("accept failed") <= 2,
            "warnings are not rate-limited: {}",
            d.count("accept failed")
        );
        drop(conns);
        let mut c = Client::connect(&socket).await;
        c.ok("daemon.info", json!({})).await;
        d.wait_for_log("accept works again", Duration::from_secs(5))
            .await;
    })
    .await;
}
