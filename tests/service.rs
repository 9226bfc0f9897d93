//! Running as a service: config errors, autostart, reload, sd_notify, socket
//! activation, log files, packaging files.

// Drives real processes with Unix signals, sockets and /proc.
#![cfg(unix)]

mod common;
mod launch;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const S10: Duration = Duration::from_secs(10);

fn run_with_config(config: &str) -> (Option<i32>, String) {
    let tmp = scratch_dir();
    let cfg = tmp.path().join("config.toml");
    std::fs::write(&cfg, config).unwrap();
    run_daemon_once(tmp.path(), &["--config".as_ref(), cfg.as_os_str()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_name_the_key_and_line_and_exit_2() {
    timed(async {
        let (code, err) = run_with_config("max_connections = 4\nsokcet = \"/x\"\n");
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("sokcet") && err.contains("line 2"), "{err}");

        let (code, err) = run_with_config("stop_timeout_ms = -5\n");
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("stop_timeout_ms"), "{err}");

        let (code, err) = run_with_config("[[host]]\nextension_id = \"a..b\"\nentry = \"/x.js\"\n");
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("host.extension_id") && err.contains(".."),
            "{err}"
        );

        let (code, err) = run_with_config("[restart]\nmax_attempts = \"three\"\n");
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("max_attempts"), "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autostart_and_reload() {
    timed(async {
        let tmp = tempfile::Builder::new().prefix("hostd").tempdir_in("/tmp").unwrap();
        let dir = tmp.path().to_path_buf();
        let marker = new_marker();
        let table = |id: &str, fx: &str, auto: bool| {
            format!(
                "[[host]]\nextension_id = \"{id}\"\nentry = \"{}\"\nautostart = {auto}\nenv = {{ HOSTD_TEST_MARKER = \"{marker}\" }}\n",
                fixture(fx)
            )
        };
        let config = format!("{}{}", table("acme.auto", "print-lines.js", true), table("acme.manual", "print-lines.js", false));
        let mut d = Daemon::start_with(DaemonOpts {
            config: Some(config),
            dir: Some(dir.clone()),
            marker: Some(marker.clone()),
            ..Default::default()
        });
        d.wait_for_log("ready: autostart hosts spawned", S10);
        let mut c = d.client().await;
        let auto = c.ok("host.status", json!({"extensionId": "acme.auto"})).await;
        assert_eq!(auto["state"], "running", "autostart host was started before READY");
        let manual = c.ok("host.status", json!({"extensionId": "acme.manual"})).await;
        assert_eq!(manual["state"], "stopped", "declared hosts are registered, not started");
        // A declared host starts by id alone.
        c.ok("host.start", json!({"extensionId": "acme.manual"})).await;

        // Reload by SIGHUP: a new autostart host is started, running hosts are kept,
        // new defaults apply to later starts.
        let mut sub = d.client().await;
        sub.ok("host.subscribe", json!({"extensionIds": ["acme.late"]})).await;
        let new_config = format!(
            "stop_timeout_ms = 1234\n[restart]\nmax_attempts = 7\n{}{}{}",
            table("acme.auto", "print-lines.js", true),
            table("acme.manual", "print-lines.js", false),
            table("acme.late", "print-lines.js", true)
        );
        std::fs::write(dir.join("config.toml"), &new_config).unwrap();
        signal(d.pid(), 1); // SIGHUP
        sub.events_until(S10, |e| e["to"] == "running").await;
        let again = c.ok("host.status", json!({"extensionId": "acme.auto"})).await;
        assert_eq!(again["pid"], auto["pid"], "a reload must not restart running hosts");
        let late = c.ok("host.status", json!({"extensionId": "acme.late"})).await;
        assert_eq!(late["restartBudget"]["maxAttempts"], 7, "new defaults apply to new starts");

        // An invalid config is refused and kept out; daemon.info says why.
        std::fs::write(dir.join("config.toml"), "max_connections = \"many\"\n").unwrap();
        let e = c.err("daemon.reload", json!({})).await;
        assert_eq!(e.code, -32007);
        assert!(e.message.contains("max_connections"), "{}", e.message);
        let info = c.ok("daemon.info", json!({})).await;
        assert!(info["lastReloadError"].as_str().unwrap().contains("max_connections"));
        assert_eq!(c.ok("host.status", json!({"extensionId": "acme.auto"})).await["pid"], auto["pid"]);
        // Fixed again: the error clears.
        std::fs::write(dir.join("config.toml"), &new_config).unwrap();
        assert_eq!(c.ok("daemon.reload", json!({})).await, json!({"ok": true}));
        assert_eq!(c.ok("daemon.info", json!({})).await["lastReloadError"], Value::Null);

        signal(d.pid(), SIGTERM);
        assert_eq!(d.wait_exit(S10).await.code(), Some(0));
        assert_eq!(marker_pids(&marker), Vec::<i32>::new());
    })
    .await;
}

/// Collect datagrams from a fake NOTIFY_SOCKET until one contains `needle`.
fn recv_until(sock: &UnixDatagram, needle: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + S10;
    let mut buf = vec![0u8; 4096];
    loop {
        if seen.iter().any(|m| m.contains(needle)) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {needle:?} from the daemon; got {seen:?}"
        );
        sock.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_status_reloading_watchdog_stopping() {
    timed(async {
        let tmp = tempfile::Builder::new()
            .prefix("notify")
            .tempdir_in("/tmp")
            .unwrap();
        let path = tmp.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let mut d = Daemon::spawn(DaemonOpts {
            env: vec![
                ("NOTIFY_SOCKET".into(), path.display().to_string()),
                ("WATCHDOG_USEC".into(), "200000".into()),
            ],
            ..Default::default()
        });
        let mut seen = Vec::new();
        recv_until(&sock, "READY=1", &mut seen);
        let ready = seen.iter().find(|m| m.contains("READY=1")).unwrap();
        assert!(ready.contains("STATUS=0 hosts"), "{ready}");
        // WATCHDOG=1 every 100 ms (half of WATCHDOG_USEC): count for one second.
        let t0 = Instant::now();
        let mut buf = vec![0u8; 4096];
        let mut pings = 0;
        while t0.elapsed() < Duration::from_secs(1) {
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            if let Ok(n) = sock.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1")
            {
                pings += 1;
            }
        }
        assert!((5..=15).contains(&pings), "{pings} watchdog pings in 1 s");
        // STATUS follows host changes.
        let mut c = d.client().await;
        c.ok(
            "host.start",
            start_params(&d, "acme.n", "print-lines.js", &[]),
        )
        .await;
        let mut more = Vec::new();
        recv_until(&sock, "STATUS=1 hosts: 1 running", &mut more);
        // Reload: RELOADING=1, then READY=1 again.
        signal(d.pid(), 1);
        let mut reload = Vec::new();
        recv_until(&sock, "RELOADING=1", &mut reload);
        let mut after = Vec::new();
        recv_until(&sock, "READY=1", &mut after);
        // Stop: STOPPING=1.
        signal(d.pid(), SIGTERM);
        let mut stop = Vec::new();
        recv_until(&sock, "STOPPING=1", &mut stop);
        assert_eq!(d.wait_exit(S10).await.code(), Some(0));
        // Hosts never see the daemon's NOTIFY_SOCKET.
        assert!(!d.log_text().contains("panicked"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_with_systemd_socket_activate() {
    timed(async {
        let activate = which::which("systemd-socket-activate").expect(
            "systemd-socket-activate (Debian package `systemd`) is required; .ci/run installs it",
        );
        let tmp = tempfile::Builder::new()
            .prefix("hostd")
            .tempdir_in("/tmp")
            .unwrap();
        let run = tmp.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let socket = run.join("hostd.sock");
        let mut child = tokio::process::Command::new(activate)
            .arg("-l")
            .arg(&socket)
            .arg(daemon_bin())
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .env("XDG_CONFIG_HOME", tmp.path().join("xdg"))
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + S10;
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "systemd-socket-activate never listened"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The first connection starts the daemon on the inherited fd.
        let mut c = Client::connect(&socket).await;
        let info = c.ok("daemon.info", json!({})).await;
        let pid = info["pid"].as_i64().unwrap() as i32;
        assert_eq!(
            pid as u32,
            child.id().unwrap(),
            "the daemon replaced systemd-socket-activate"
        );
        signal(pid, SIGTERM);
        let status = tokio::time::timeout(S10, child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(0));
        let mut err = String::new();
        use tokio::io::AsyncReadExt;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        assert!(
            err.contains("activated=true") || err.contains("activated"),
            "{err}"
        );
    })
    .await;
}

fn log_files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .starts_with("dscode-hostd.")
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_output_reaches_the_log_file_in_text_and_json() {
    timed(async {
        for format in ["text", "json"] {
            let mut d = Daemon::start_with(DaemonOpts {
                config: Some(format!("log_format = \"{format}\"\n")),
                ..Default::default()
            });
            let mut c = d.client().await;
            c.ok(
                "host.start",
                start_params(&d, "acme.logged", "print-lines.js", &["2"]),
            )
            .await;
            let state = d.dir.join("state");
            let deadline = Instant::now() + S10;
            let content = loop {
                let files = log_files(&state);
                let content: String = files
                    .iter()
                    .map(|f| std::fs::read_to_string(f).unwrap_or_default())
                    .collect();
                if content.contains("line 2") {
                    break content;
                }
                assert!(
                    Instant::now() < deadline,
                    "{format}: no host line in {files:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let line = content.lines().find(|l| l.contains("line 2")).unwrap();
            assert!(line.contains("acme.logged"), "{format}: {line}");
            if format == "json" {
                let v: Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["fields"]["extension_id"], "acme.logged", "{line}");
                assert_eq!(v["fields"]["message"], "line 2");
            } else {
                assert!(line.contains("extension_id=acme.logged"), "{line}");
            }
            signal(d.pid(), SIGTERM);
            d.wait_exit(S10).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_files_are_rotated_and_capped() {
    timed(async {
        // Old files beyond log_max_files are pruned when the daemon opens its log.
        let tmp = tempfile::Builder::new()
            .prefix("hostd")
            .tempdir_in("/tmp")
            .unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        for day in 1..=5 {
            std::fs::write(
                state.join(format!("dscode-hostd.2020-01-0{day}.log")),
                "old\n",
            )
            .unwrap();
        }
        let mut d = Daemon::start_with(DaemonOpts {
            config: Some("log_max_files = 2\n".into()),
            dir: Some(tmp.path().to_path_buf()),
            ..Default::default()
        });
        let files = log_files(&state);
        assert!(files.len() <= 2, "{files:?}");
        signal(d.pid(), SIGTERM);
        d.wait_exit(S10).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packaging_files_are_valid() {
    timed(async {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let plist = root.join("packaging/launchd/dev.dscode.hostd.plist");
        let python = which::which("python3").expect("python3 is required to check the plist");
        let out = Command::new(python)
            .arg("-c")
            .arg("import plistlib,sys,json; d=plistlib.load(open(sys.argv[1],'rb')); print(json.dumps(d))")
            .arg(&plist)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["Label"], "dev.dscode.hostd");
        assert!(v["ProgramArguments"][0].as_str().unwrap().ends_with("dscode-hostd"));
        assert!(v["KeepAlive"].is_object());

        let unit = std::fs::read_to_string(root.join("packaging/systemd/dscode-hostd.service")).unwrap();
        for line in ["Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "NoNewPrivileges=yes", "systemctl --user enable --now"] {
            assert!(unit.contains(line), "unit lacks {line}");
        }
        let sock = std::fs::read_to_string(root.join("packaging/systemd/dscode-hostd.socket")).unwrap();
        assert!(sock.contains("ListenStream=%t/dscode-hostd/hostd.sock"));
        assert!(sock.contains("SocketMode=0600"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_refuses_a_descriptor_that_is_not_a_listening_unix_stream() {
    timed(async {
        use std::os::fd::AsRawFd;
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (unconnected, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        for (fd, needles) in [
            (udp.as_raw_fd(), ["AF_INET (IPv4) SOCK_DGRAM", "(UDP)"]),
            (tcp.as_raw_fd(), ["AF_INET (IPv4) SOCK_STREAM", "(TCP)"]),
            (
                unconnected.as_raw_fd(),
                ["AF_UNIX SOCK_STREAM", "not listening"],
            ),
            (file.as_raw_fd(), ["is not a socket", "LISTEN_FDS"]),
        ] {
            let (_tmp, dir) = launch::temp_dir();
            let args = launch::args_in(&dir, "");
            let mut d = launch::launch(
                &dir,
                &args,
                &[],
                launch::Setup {
                    listen_fd: Some(fd),
                    ..Default::default()
                },
            );
            let (status, err) = d.wait_exit(S10).await;
            assert_eq!(status.code(), Some(1), "{err}");
            for n in needles {
                assert!(err.contains(n), "no {n:?} in: {err}");
            }
            assert!(err.contains("fd 3"), "{err}");
            assert!(!dir.join("run/hostd.sock").exists());
        }
    })
    .await;
}

/// The state directory, the log directory and its files, `running.json`
/// and each host's directories are private whatever the umask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_logs_are_private_whatever_the_umask() {
    timed(async {
        for umask in [0o022, 0o000] {
            let (_tmp, dir) = launch::temp_dir();
            let state = dir.join("state");
            if umask == 0 {
                // What an older version left: a 0755 state dir, a 0644 log.
                std::fs::create_dir(&state).unwrap();
                launch::chmod(&state, 0o755);
                let old = state.join("dscode-hostd.2020-01-01.log");
                std::fs::write(&old, "old\n").unwrap();
                launch::chmod(&old, 0o644);
            }
            let args = launch::args_in(&dir, "");
            let mut d = launch::launch(
                &dir,
                &args,
                &[],
                launch::Setup {
                    umask: Some(umask),
                    ..Default::default()
                },
            );
            d.wait_for_log("listening", S10).await;
            let mut c = Client::connect(&dir.join("run/hostd.sock")).await;
            c.ok("host.start", d.start_params("acme.files", "print-lines.js"))
                .await;
            let records = state.join("running.json");
            eventually(S10, "running.json records the host", || {
                std::fs::read_to_string(&records).is_ok_and(|t| t.contains("acme.files"))
            })
            .await;
            let logs = log_files(&state);
            assert!(!logs.is_empty());
            let mut seen = vec![(state.clone(), launch::mode(&state))];
            for p in logs.iter().chain([&records]) {
                seen.push((p.clone(), launch::mode(p)));
            }
            let host = state.join("hosts/acme.files");
            for p in [state.join("hosts"), host.clone(), host.join("tmp")] {
                seen.push((p.clone(), launch::mode(&p)));
            }
            for (p, m) in &seen {
                let want = if std::fs::metadata(p).unwrap().is_dir() {
                    0o700
                } else {
                    0o600
                };
                assert_eq!(*m, want, "umask {umask:03o}: {} is {m:04o}", p.display());
            }
            signal(d.pid(), SIGTERM);
            let (status, err) = d.wait_exit(S10).await;
            assert_eq!(status.code(), Some(0), "{err}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_log_file() {
    timed(async {
        let mut d = Daemon::start();
        let state = d.dir.join("state");
        let files = log_files(&state);
        assert_eq!(files.len(), 1, "{files:?}");
        let current = files[0].clone();
        // The file is written by a worker thread: let it catch up first.
        eventually(S10, "the log file has the start-up lines", || {
            std::fs::read_to_string(&current).is_ok_and(|t| t.contains("listening"))
        })
        .await;
        // What logrotate does: move the file away, then signal.
        let rotated = state.join("rotated.log.1");
        std::fs::rename(&current, &rotated).unwrap();
        signal(d.pid(), libc::SIGUSR1);
        d.wait_for_log("reopened the log file", S10);
        eventually(S10, "the reopened file has the reopen line", || {
            std::fs::read_to_string(&current).is_ok_and(|t| t.contains("reopened the log file"))
        })
        .await;
        assert_eq!(launch::mode(&current), 0o600);
        let old = std::fs::read_to_string(&rotated).unwrap();
        assert!(old.contains("listening"), "{old}");
        assert!(!old.contains("reopened the log file"), "{old}");
        signal(d.pid(), SIGTERM);
        assert_eq!(d.wait_exit(S10).await.code(), Some(0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reports_what_it_could_not_apply_and_leaves_an_editors_host_alone() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        // An editor runs acme.mine with its own spec.
        let mut p = start_params(&d, "acme.mine", "print-lines.js", &[]);
        p["readyTimeoutMs"] = json!(0);
        c.ok("host.start", p).await;
        // The config now declares acme.mine (another entry) and a host whose
        // entry does not exist.
        let config = format!(
            "[sandbox]\nwritable_paths = [\"{}\"]\n\
             [[host]]\nextension_id = \"acme.mine\"\nentry = \"{}\"\n\
             [[host]]\nextension_id = \"acme.broken\"\nentry = \"/nonexistent/host.js\"\n",
            d.dir.display(),
            fixture("crash-after.js"),
        );
        std::fs::write(d.dir.join("config.toml"), config).unwrap();
        let r = c.ok("daemon.reload", json!({})).await;
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["failed"][0]["extensionId"], "acme.broken", "{r}");
        assert!(
            r["failed"][0]["error"]
                .as_str()
                .unwrap()
                .contains("/nonexistent/host.js"),
            "{r}"
        );
        assert_eq!(r["deferred"], json!(["acme.mine"]), "{r}");
        let info = c.ok("daemon.info", json!({})).await;
        assert!(
            info["lastReloadError"]
                .as_str()
                .unwrap_or("")
                .contains("acme.broken"),
            "{info}"
        );
        // The editor's host keeps its spec while it runs…
        let st = c
            .ok("host.status", json!({"extensionId": "acme.mine"}))
            .await;
        assert_eq!(st["state"], "running");
        assert!(
            st["entry"].as_str().unwrap().ends_with("print-lines.js"),
            "{st}"
        );
        // …and the config's applies once it stops.
        let st = c.ok("host.stop", json!({"extensionId": "acme.mine"})).await;
        assert!(
            st["entry"].as_str().unwrap().ends_with("crash-after.js"),
            "{st}"
        );
        // A clean reload clears the error.
        let config = format!("[sandbox]\nwritable_paths = [\"{}\"]\n", d.dir.display());
        std::fs::write(d.dir.join("config.toml"), config).unwrap();
        assert_eq!(c.ok("daemon.reload", json!({})).await, json!({"ok": true}));
        let info = c.ok("daemon.info", json!({})).await;
        assert_eq!(info["lastReloadError"], Value::Null, "{info}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_applies_on_reload_without_a_restart() {
    timed(async {
        // No RUST_LOG: the config's log_level decides (info at first).
        let d = Daemon::start_with(DaemonOpts {
            config: Some("log_level = \"info\"\n".into()),
            env: vec![("RUST_LOG".into(), String::new())],
            ..Default::default()
        });
        let mut c = d.client().await;
        let config = |level: &str| {
            format!(
                "log_level = \"{level}\"\n[sandbox]\nwritable_paths = [\"{}\"]\n",
                d.dir.display()
            )
        };
        // Reloaded at warn: from then on (this reload's own outcome line
        // included) info lines are not written.
        std::fs::write(d.dir.join("config.toml"), config("warn")).unwrap();
        assert_eq!(c.ok("daemon.reload", json!({})).await, json!({"ok": true}));
        assert!(
            !d.log_text().contains("config reloaded"),
            "{}",
            d.log_text()
        );
        // Reloaded at info: the level changes at once, and it is not among
        // the keys that need a restart.
        std::fs::write(d.dir.join("config.toml"), config("info")).unwrap();
        assert_eq!(c.ok("daemon.reload", json!({})).await, json!({"ok": true}));
        d.wait_for_log("config reloaded", S10);
        assert!(
            !d.log_text().contains("needs a daemon restart"),
            "{}",
            d.log_text()
        );
        let pid = d.pid();
        assert!(process_alive(pid));
    })
    .await;
}
