//! Isolation and hygiene of the hosts' environment and processes.

// Drives real processes with Unix signals, sockets and /proc.
#![cfg(unix)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_get_an_allowlisted_environment() {
    timed(async {
        let d = Daemon::start_with(DaemonOpts {
            env: vec![
                ("NODE_OPTIONS".into(), "--require /tmp/evil.js".into()),
                ("NODE_EXTRA_CA_CERTS".into(), "/tmp/ca.pem".into()),
                ("LD_PRELOAD".into(), "/tmp/evil.so".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "hunter2".into()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
            ..Default::default()
        });
        let mut c = d.client().await;
        let out = d.dir.join("env.json");
        let mut p = start_params(&d, "acme.env", "dump-env.js", &[out.to_str().unwrap()]);
        p["env"]["EXPLICIT"] = json!("yes");
        c.ok("host.start", p).await;
        wait_for_file(&out).await;
        let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let env = v["env"].as_object().unwrap();
        for banned in [
            "NODE_OPTIONS",
            "NODE_EXTRA_CA_CERTS",
            "LD_PRELOAD",
            "AWS_SECRET_ACCESS_KEY",
            "NOTIFY_SOCKET",
            "DSCODE_HOSTD_SOCKET",
        ] {
            assert!(!env.contains_key(banned), "{banned} leaked to the host");
        }
        assert_eq!(env["LANG"], "C.UTF-8");
        assert_eq!(env["EXPLICIT"], "yes");
        assert!(env.contains_key("PATH"));
        let tmp = env["TMPDIR"].as_str().unwrap();
        assert!(
            tmp.starts_with(d.dir.join("state/hosts/acme.env").to_str().unwrap()),
            "{tmp}"
        );
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(tmp).unwrap().permissions())
                & 0o777;
        assert_eq!(mode, 0o700);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_orphans_when_the_daemon_is_sigkilled() {
    timed(async {
        let mut d = Daemon::start();
        let mut c = d.client().await;
        let st = c
            .ok(
                "host.start",
                start_params(&d, "acme.tree", "fork-grandchild.js", &[]),
            )
            .await;
        let node_pid = st["pid"].as_i64().unwrap() as i32;
        // The grandchild (sleep) in the host's process group.
        let sleep_pid = output_pid(&mut c, "acme.tree", "sleep ").await;
        // running.json has the record (written within ~10 ms).
        let records = d.dir.join("state/running.json");
        eventually(
            Duration::from_secs(5),
            "running.json records the host",
            || std::fs::read_to_string(&records).is_ok_and(|t| t.contains("acme.tree")),
        )
        .await;
        // An unrelated process, recorded with the right pid but another start
        // time (a recycled pid), must survive the next daemon's reaping.
        let mut bystander = std::process::Command::new("sleep");
        std::os::unix::process::CommandExt::process_group(&mut bystander, 0);
        let mut bystander = bystander.arg("1000").spawn().unwrap();
        let by_pid = bystander.id() as i32;

        signal(d.pid(), SIGKILL);
        d.wait_exit(Duration::from_secs(5)).await;
        eventually(
            Duration::from_secs(1),
            "the direct child dies with the daemon (PDEATHSIG)",
            || !process_alive(node_pid),
        )
        .await;
        assert!(
            process_alive(sleep_pid),
            "the grandchild is the leftover this test is about"
        );

        let mut recs: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(&records).unwrap()).unwrap();
        recs.push(
            json!({"extensionId": "bystander", "pid": by_pid, "pgid": by_pid, "startTime": 1}),
        );
        std::fs::write(&records, serde_json::to_string(&recs).unwrap()).unwrap();

        let second = Daemon::start_with(DaemonOpts {
            dir: Some(d.dir.clone()),
            marker: Some(d.marker.clone()),
            ..Default::default()
        });
        eventually(
            Duration::from_secs(2),
            "the leftover grandchild is reaped",
            || !process_alive(sleep_pid),
        )
        .await;
        assert!(process_alive(by_pid), "a recycled pid was killed");
        assert!(
            second
                .log_text()
                .contains("a previous daemon died leaving this host running"),
            "{}",
            second.log_text()
        );
        // daemon.info says which hosts the previous run left, and what
        // became of them; no IPC directory of theirs is left.
        let info = second.client().await.ok("daemon.info", json!({})).await;
        let recovered = info["recovered"].as_array().unwrap();
        let tree = recovered
            .iter()
            .find(|r| r["extensionId"] == "acme.tree")
            .unwrap_or_else(|| panic!("{info}"));
        assert_eq!(tree["pid"], node_pid);
        assert_eq!(tree["reaped"], true, "{tree}");
        let by = recovered
            .iter()
            .find(|r| r["extensionId"] == "bystander")
            .unwrap();
        assert_eq!(by["reaped"], false, "{by}");
        let ipc_dirs = std::fs::read_dir(d.dir.join("run/ipc")).map_or(0, |d| d.count());
        assert_eq!(ipc_dirs, 0, "leftover IPC directories");
        assert_eq!(marker_pids(&d.marker), Vec::<i32>::new());
        let _ = bystander.kill();
        let _ = bystander.wait();
    })
    .await;
}

fn sha256_hex(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A private copy of node (so tests can tamper with it).
fn node_copy(dir: &std::path::Path) -> std::path::PathBuf {
    let copy = dir.join("node-copy");
    std::fs::copy(require_node(), &copy).unwrap();
    copy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_node_is_refused_with_32004() {
    timed(async {
        let tmp = tempfile::Builder::new()
            .prefix("hostd")
            .tempdir_in("/tmp")
            .unwrap();
        let node = node_copy(tmp.path());
        let good = sha256_hex(&node);
        // Flip one byte in the middle.
        let mut bytes = std::fs::read(&node).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&node, &bytes).unwrap();
        let bad = sha256_hex(&node);
        let d = Daemon::start_with(DaemonOpts {
            config: Some(format!(
                "[node]\npath = \"{}\"\nsha256 = [\"{good}\"]\nverify = \"required\"\n",
                node.display()
            )),
            ..Default::default()
        });
        let mut c = d.client().await;
        let e = c
            .err(
                "host.start",
                start_params(&d, "acme.v", "print-lines.js", &[]),
            )
            .await;
        assert_eq!(e.code, -32004, "{e:?}");
        for part in [node.to_str().unwrap(), &good, &bad] {
            assert!(e.message.contains(part), "{} lacks {part}", e.message);
        }
        assert_eq!(e.data["actual"], bad);
        let st = c.ok("host.status", json!({"extensionId": "acme.v"})).await;
        assert_eq!(st["state"], "crashed");
        assert_eq!(st["generation"], 0, "nothing was executed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_runs_is_what_was_hashed_even_if_the_file_is_swapped() {
    timed(async {
        let tmp = tempfile::Builder::new().prefix("hostd").tempdir_in("/tmp").unwrap();
        let node = node_copy(tmp.path());
        let good = sha256_hex(&node);
        // After verification, replace the binary with an impostor that would
        // print SWAPPED and exit 42.
        let hook = tmp.path().join("swap.sh");
        std::fs::write(
            &hook,
            "#!/bin/sh\nprintf '#!/bin/sh\\necho SWAPPED; exit 42\\n' > \"$1.new\"\nchmod +x \"$1.new\"\nmv \"$1.new\" \"$1\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let d = Daemon::start_with(DaemonOpts {
            config: Some(format!("[node]\npath = \"{}\"\nsha256 = [\"{good}\"]\n", node.display())),
            env: vec![("DSCODE_HOSTD_TEST_AFTER_VERIFY".into(), hook.display().to_string())],
            ..Default::default()
        });
        let mut c = d.client().await;
        c.ok("host.start", start_params(&d, "acme.swap", "print-lines.js", &["2"])).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = c.ok("host.logs", json!({"extensionId": "acme.swap"})).await.to_string();
            assert!(!logs.contains("SWAPPED"), "the swapped file ran: {logs}");
            if logs.contains("line 2") {
                break;
            }
            assert!(Instant::now() < deadline, "the original node never ran: {logs}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(std::fs::read_to_string(&node).unwrap().contains("SWAPPED"), "the hook did swap the file");
        let st = c.ok("host.status", json!({"extensionId": "acme.swap"})).await;
        assert_eq!(st["state"], "running");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_profile_confines_writes_ptrace_and_signals() {
    timed(async {
        let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
        let (_tmp, out, d) = sandboxed("", DaemonOpts::default());
        let mut c = d.client().await;
        let info = c.ok("daemon.info", json!({})).await;
        assert!(
            info["sandbox"]["landlock"]
                .as_str()
                .unwrap_or("")
                .starts_with('v'),
            "this test needs Landlock (kernel lsm list: {lsm:?}); daemon.info says {}",
            info["sandbox"]
        );
        // Another host, with its IPC channel up: the probe must not be able
        // to remove its socket or signal it.
        let mut other = start_params(&d, "acme.other", "ipc-host.js", &[]);
        other["env"]["IPC_HOST_MODE"] = json!("echo");
        other["waitReady"] = json!(true);
        let other = c.ok("host.start", other).await;
        let other_pid = other["pid"].as_i64().unwrap();
        let other_socket = host_env(other_pid as i32, "DSCODE_IPC_URL")
            .strip_prefix("ipc://")
            .unwrap()
            .to_string();
        assert!(
            std::path::Path::new(&other_socket).exists(),
            "{other_socket}"
        );

        let outside = std::path::Path::new("/var/tmp").join(format!("hostd-probe-{}", d.marker));
        let result = out.join("probe.json");
        let args = [
            outside.to_str().unwrap().to_string(),
            d.pid().to_string(),
            result.to_str().unwrap().to_string(),
            other_socket.clone(),
            other_pid.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        c.ok(
            "host.start",
            start_params(&d, "acme.probe", "sandbox-probe.js", &args),
        )
        .await;
        wait_for_file(&result).await;
        let r: Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
        assert_eq!(r["writeOutside"], "EACCES", "{r}");
        assert!(!outside.exists());
        assert_eq!(r["writeTmp"], "ok", "its private TMPDIR is writable: {r}");
        assert_eq!(r["signalDaemon"], "EPERM", "{r}");
        assert_eq!(r["ptrace"], "-1 1", "ptrace must fail with EPERM: {r}");
        assert_eq!(r["unlinkOther"], "EACCES", "another host's IPC socket: {r}");
        assert_eq!(r["signalOther"], "EPERM", "another host: {r}");
        assert!(std::path::Path::new(&other_socket).exists());
        let echo = c
            .ok(
                "host.request",
                json!({"extensionId": "acme.other", "type": "echo", "payload": {"still": "here"}}),
            )
            .await;
        assert_eq!(echo["still"], "here", "{echo}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_limits_and_the_v8_heap_bound() {
    timed(async {
        let (_tmp, dir, d) = sandboxed(
            "max_open_files = 256\nmax_old_space_mb = 128\n",
            DaemonOpts {
                ..Default::default()
            },
        );
        let mut c = d.client().await;
        let out = dir.join("env.json");
        c.ok(
            "host.start",
            start_params(&d, "acme.lim", "dump-env.js", &[out.to_str().unwrap()]),
        )
        .await;
        wait_for_file(&out).await;
        let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(v["execArgv"], json!(["--max-old-space-size=128"]));
        let limits = v["limits"].as_str().unwrap();
        let line = |name: &str| -> Vec<String> {
            limits
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in {limits}"))[name.len()..]
                .split_whitespace()
                .take(2)
                .map(String::from)
                .collect()
        };
        assert_eq!(line("Max open files"), ["256", "256"]);
        assert_eq!(line("Max core file size"), ["0", "0"]);
        assert_eq!(
            line("Max address space"),
            ["unlimited", "unlimited"],
            "RLIMIT_AS must stay unset"
        );
    })
    .await;
}

/// The directory of `pid`'s cgroup that holds `controller`'s files: in the
/// v1 hierarchy of `controller` when it has one (`true`), else its cgroup2
/// cgroup (`false`).
fn cgroup_dir(pid: i32, controller: &str) -> Option<(String, bool)> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = |want: &dyn Fn(&str, &str) -> bool| {
        mountinfo.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut f = right.split_whitespace();
            let (t, _, o) = (f.next()?, f.next()?, f.next()?);
            want(t, o).then(|| left.split_whitespace().nth(4).map(String::from))?
        })
    };
    let entry = |v1: bool| {
        own.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, ctl, path) = (parts.next()?, parts.next()?, parts.next()?);
            let hit = if v1 {
                ctl.split(',').any(|c| c == controller)
            } else {
                id == "0"
            };
            hit.then(|| path.to_string())
        })
    };
    if let Some(path) = entry(true) {
        let m = mount(&|t, o| t == "cgroup" && o.split(',').any(|x| x == controller))?;
        return Some((format!("{m}{path}"), true));
    }
    let m = mount(&|t, _| t == "cgroup2")?;
    Some((format!("{m}{}", entry(false)?), false))
}

fn read_trimmed(path: String) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The memory limit of `pid`'s cgroup, in bytes.
fn cgroup_memory_limit(pid: i32) -> Option<u64> {
    match cgroup_dir(pid, "memory")? {
        (dir, true) => read_trimmed(format!("{dir}/memory.limit_in_bytes"))?
            .parse()
            .ok(),
        (dir, false) => read_trimmed(format!("{dir}/memory.max"))?.parse().ok(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_limit_holds_hosts_to_memory_max_mb() {
    timed(async {
        let (_tmp, _, d) = sandboxed("memory_max_mb = 160\n", DaemonOpts::default());
        let mut c = d.client().await;
        let info = c.ok("daemon.info", json!({})).await;
        let via = info["sandbox"]["memoryLimit"]["via"].as_str().unwrap_or("").to_string();
        assert!(
            via == "cgroup1" || via == "cgroup2",
            "this test needs a writable memory controller (a delegated cgroup2 one, or the v1 memory hierarchy as root); daemon.info says {info}"
        );
        assert_eq!(info["sandbox"]["memoryLimit"]["mb"], 160);

        // Within the limit: runs, and its cgroup carries the limit.
        c.ok("host.start", start_params(&d, "acme.small", "eat-memory.js", &["16"])).await;
        wait_for_output(&mut c, "acme.small", "held 16 MiB").await;
        let small = c.ok("host.status", json!({"extensionId": "acme.small"})).await;
        assert_eq!(small["state"], "running");
        let pid = small["pid"].as_i64().unwrap() as i32;
        assert_eq!(cgroup_memory_limit(pid), Some(160 << 20), "via {via}");

        assert_eq!(small["memoryMaxMb"], 160, "{small}");

        // A host's own limit overrides the default (here, upwards).
        let mut roomy = start_params(&d, "acme.roomy", "eat-memory.js", &["256"]);
        roomy["memoryMaxMb"] = json!(400);
        c.ok("host.start", roomy).await;
        wait_for_output(&mut c, "acme.roomy", "held 256 MiB").await;
        let roomy = c.ok("host.status", json!({"extensionId": "acme.roomy"})).await;
        assert_eq!(roomy["state"], "running", "{roomy}");
        assert_eq!(roomy["memoryMaxMb"], 400, "{roomy}");
        let roomy_pid = roomy["pid"].as_i64().unwrap() as i32;
        assert_eq!(cgroup_memory_limit(roomy_pid), Some(400 << 20));
        let mut zero = start_params(&d, "acme.zero", "eat-memory.js", &["1"]);
        zero["memoryMaxMb"] = json!(0);
        let e = c.err("host.start", zero).await;
        assert_eq!(e.code, -32602, "{e:?}");

        // Beyond it: the kernel's OOM killer ends the host (no RLIMIT_AS:
        // the allocation itself succeeds, touching the pages does not).
        let mut p = start_params(&d, "acme.big", "eat-memory.js", &["1024"]);
        p["restart"] = json!({"maxAttempts": 0});
        c.ok("host.start", p).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let big = loop {
            let s = c.ok("host.status", json!({"extensionId": "acme.big"})).await;
            if s["state"] == "crashed" {
                break s;
            }
            assert!(Instant::now() < deadline, "the host over its limit was never killed: {s}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(big["lastExit"]["signal"], 9, "{big}");
        let logs = c.ok("host.logs", json!({"extensionId": "acme.big"})).await;
        assert!(!logs.to_string().contains("held 1024 MiB"), "{logs}");
        // The small host is untouched.
        let small = c.ok("host.status", json!({"extensionId": "acme.small"})).await;
        assert_eq!(small["state"], "running");
        assert_eq!(small["pid"], pid);
    })
    .await;
}

/// A daemon in a fresh temp dir whose `[sandbox]` table is `keys` plus one
/// writable directory, returned (fixtures write their reports there). Only
/// that directory: the daemon's runtime and state dirs, in the same temp
/// dir, stay as the sandbox makes them. Keep `tmp` alive.
fn sandboxed(keys: &str, opts: DaemonOpts) -> (tempfile::TempDir, std::path::PathBuf, Daemon) {
    let tmp = tempfile::Builder::new()
        .prefix("hostd")
        .tempdir_in("/tmp")
        .unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let d = Daemon::start_with(DaemonOpts {
        config: Some(format!(
            "[sandbox]\nwritable_paths = [\"{}\"]\n{keys}",
            out.display()
        )),
        dir: Some(tmp.path().to_path_buf()),
        ..opts
    });
    (tmp, out, d)
}

/// The CFS quota of `pid`'s cgroup as a percent of one CPU.
fn cgroup_cpu_percent(pid: i32) -> Option<u64> {
    let (quota, period): (u64, u64) = match cgroup_dir(pid, "cpu")? {
        (dir, true) => (
            read_trimmed(format!("{dir}/cpu.cfs_quota_us"))?
                .parse()
                .ok()?,
            read_trimmed(format!("{dir}/cpu.cfs_period_us"))?
                .parse()
                .ok()?,
        ),
        (dir, false) => {
            let max = read_trimmed(format!("{dir}/cpu.max"))?;
            let (q, p) = max.split_once(' ')?;
            (q.parse().ok()?, p.parse().ok()?)
        }
    };
    Some(quota * 100 / period)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cpu_limit_throttles_a_spinning_host() {
    timed(async {
        let (_tmp, _, d) = sandboxed("", DaemonOpts::default());
        let mut c = d.client().await;
        let info = c.ok("daemon.info", json!({})).await;
        let via = info["sandbox"]["cpuLimit"]["via"].as_str().unwrap_or("").to_string();
        assert!(
            via == "cgroup1" || via == "cgroup2",
            "this test needs a writable cpu controller (a delegated cgroup2 one, or the v1 cpu hierarchy as root); daemon.info says {info}"
        );
        let mut p = start_params(&d, "acme.spin", "spin.js", &["1500"]);
        p["cpuMaxPercent"] = json!(20);
        let st = c.ok("host.start", p).await;
        assert_eq!(st["cpuMaxPercent"], 20, "{st}");
        let pid = st["pid"].as_i64().unwrap() as i32;
        assert_eq!(cgroup_cpu_percent(pid), Some(20), "via {via}");
        // The host measures itself: CPU time against 1.5 s of wall time.
        let lines = wait_for_output(&mut c, "acme.spin", "spun cpu").await;
        let text = lines
            .iter()
            .filter_map(|l| l["text"].as_str())
            .find(|t| t.starts_with("spun cpu"))
            .unwrap()
            .to_string();
        let nums: Vec<f64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        let (cpu, wall) = (nums[0], nums[1]);
        // A 20% quota: at most 20 ms per 100 ms period (plus the first,
        // unthrottled period and scheduler slack).
        assert!(cpu / wall < 0.35, "{text}: the 20% quota did not hold");
        assert!(cpu > 0.0, "{text}");
        let mut zero = start_params(&d, "acme.zero", "spin.js", &["1"]);
        zero["cpuMaxPercent"] = json!(0);
        assert_eq!(c.err("host.start", zero).await.code, -32602);
    })
    .await;
}

/// Which of `pid`'s descriptors point at `file`.
fn fds_on(pid: i32, file: &std::path::Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == file))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_the_daemon_inherited_never_reach_a_host() {
    timed(async {
        for profile in ["default", "strict", "off"] {
            if profile == "strict" && which::which("bwrap").is_err() {
                panic!("the strict profile needs bwrap (Debian package bubblewrap); .ci/run installs it");
            }
            let leaked_dir = tempfile::Builder::new().prefix("leak").tempdir_in("/tmp").unwrap();
            let leaked = leaked_dir.path().join("leaked.txt");
            let (_tmp, dir, d) = sandboxed(
                &format!("profile = \"{profile}\"\n"),
                DaemonOpts {
                    leak_fd: Some(leaked.clone()),
                    ..Default::default()
                },
            );
            // The daemon is not dumpable: only root may look at its fds.
            // (Unprivileged, the dup2 in the harness is trusted.)
            if nix::unistd::geteuid().is_root() {
                assert_eq!(
                    fds_on(d.pid(), &leaked),
                    [LEAKED_FD.to_string()],
                    "the harness must leak fd {LEAKED_FD} into the daemon"
                );
            } else {
                assert!(
                    std::fs::read_dir(format!("/proc/{}/fd", d.pid())).is_err(),
                    "the daemon's descriptors are readable by its own user: is it dumpable?"
                );
            }
            let mut c = d.client().await;
            let out = dir.join("env.json");
            c.ok("host.start", start_params(&d, "acme.fds", "dump-env.js", &[out.to_str().unwrap()]))
                .await;
            wait_for_file(&out).await;
            let pids = marker_pids(&d.marker);
            assert!(!pids.is_empty(), "{profile}: no host process found");
            for pid in pids {
                assert_eq!(fds_on(pid, &leaked), Vec::<String>::new(), "{profile}: host {pid} inherited the daemon's descriptor");
            }
            c.ok("host.stop", json!({"extensionId": "acme.fds"})).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_a_grandchild_that_left_the_process_group() {
    timed(async {
        let d = Daemon::start();
        let mut c = d.client().await;
        require_cgroup2(&mut c).await;
        c.ok(
            "host.start",
            start_params(&d, "acme.escape", "setsid-escapee.js", &[]),
        )
        .await;
        let pid = output_pid(&mut c, "acme.escape", "escapee ").await;
        eventually(
            Duration::from_secs(5),
            "the escapee runs in its own session",
            || {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                    dscode_hostd::spawn::parse_stat_state_pgrp(&s).is_some_and(|(_, g)| g == pid)
                })
            },
        )
        .await;
        let st = c
            .ok(
                "host.stop",
                json!({"extensionId": "acme.escape", "timeoutMs": 2000}),
            )
            .await;
        assert_eq!(st["state"], "stopped");
        assert!(!process_alive(pid), "the setsid escapee survived host.stop");
        assert_eq!(marker_pids(&d.marker), Vec::<i32>::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_profile_hides_other_pids_and_the_network() {
    timed(async {
        which::which("bwrap").expect(
            "the strict profile needs bwrap (Debian package bubblewrap); .ci/run installs it",
        );
        let (_tmp, dir, d) = sandboxed(
            "profile = \"strict\"\nnetwork = \"deny\"\n",
            DaemonOpts {
                ..Default::default()
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut c = d.client().await;
        // Another strict host with its IPC channel up (the handshake works
        // through bwrap): the probe must not see its socket.
        let mut other = start_params(&d, "acme.other", "ipc-host.js", &[]);
        other["env"]["IPC_HOST_MODE"] = json!("echo");
        other["waitReady"] = json!(true);
        let other = c.ok("host.start", other).await;
        let other_socket = host_env(other["pid"].as_i64().unwrap() as i32, "DSCODE_IPC_URL")
            .strip_prefix("ipc://")
            .unwrap()
            .to_string();
        let result = dir.join("strict.json");
        let args = [
            d.pid().to_string(),
            port.to_string(),
            result.to_str().unwrap().to_string(),
            other_socket.clone(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let st = c
            .ok(
                "host.start",
                start_params(&d, "acme.strict", "strict-probe.js", &args),
            )
            .await;
        // The probe writes its report in one call; wait until it parses.
        let deadline = Instant::now() + Duration::from_secs(10);
        let r: Value = loop {
            if let Some(v) = std::fs::read(&result)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                break v;
            }
            let logs = c
                .ok("host.logs", json!({"extensionId": "acme.strict"}))
                .await;
            assert!(
                Instant::now() < deadline,
                "the strict probe never reported: {logs}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(r["seesDaemon"], false, "{r}");
        assert!(r["pids"].as_u64().unwrap() <= 4, "sees too many pids: {r}");
        assert_ne!(r["tcp"], "connected", "reached the network: {r}");
        assert_eq!(r["seesOwnIpcDir"], true, "{r}");
        assert_eq!(
            r["seesOtherSocket"], false,
            "another host's IPC socket is visible: {r}"
        );
        assert_eq!(
            r["ipcRoot"].as_array().map(Vec::len),
            Some(1),
            "only its own IPC dir: {r}"
        );
        assert!(std::path::Path::new(&other_socket).exists());
        // Stop still takes the whole sandbox down.
        let pid = st["pid"].as_i64().unwrap() as i32;
        c.ok("host.stop", json!({"extensionId": "acme.strict"}))
            .await;
        assert!(!process_alive(pid));
        c.ok("host.stop", json!({"extensionId": "acme.other"}))
            .await;
        assert_eq!(marker_pids(&d.marker), Vec::<i32>::new());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_profile_without_bwrap_is_a_clear_start_error() {
    timed(async {
        let tmp = tempfile::Builder::new()
            .prefix("hostd")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let d = Daemon::start_with(DaemonOpts {
            config: Some(format!(
                "node = \"{}\"\n[sandbox]\nprofile = \"strict\"\nwritable_paths = [\"{}\"]\n",
                require_node().display(),
                dir.display()
            )),
            dir: Some(dir),
            env: vec![("PATH".into(), "/nonexistent".into())],
            ..Default::default()
        });
        let mut c = d.client().await;
        let e = c
            .err(
                "host.start",
                start_params(&d, "acme.nobwrap", "print-lines.js", &[]),
            )
            .await;
        assert_eq!(e.code, -32003, "{e:?}");
        assert!(
            e.message.contains("bwrap") && e.message.contains("bubblewrap"),
            "{}",
            e.message
        );
        assert_eq!(
            c.ok("host.status", json!({"extensionId": "acme.nobwrap"}))
                .await["state"],
            "crashed"
        );
    })
    .await;
}

/// The JSON a `caps-probe.js` host prints.
async fn caps_probe(c: &mut Client, d: &Daemon, id: &str, other_pid: Option<i64>) -> Value {
    let mut args = vec![d.pid().to_string()];
    args.extend(other_pid.map(|p| p.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.ok("host.start", start_params(d, id, "caps-probe.js", &args))
        .await;
    let lines = wait_for_output(c, id, "caps ").await;
    let line = lines
        .iter()
        .filter_map(|l| l["text"].as_str()?.strip_prefix("caps "))
        .next()
        .unwrap();
    serde_json::from_str(line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_hold_no_capability_in_any_profile() {
    timed(async {
        let root = nix::unistd::geteuid().is_root();
        let bwrap = which::which("bwrap").is_ok();
        assert!(
            bwrap,
            "the strict profile needs bwrap (Debian package bubblewrap); .ci/run installs it"
        );
        for profile in ["default", "strict", "off"] {
            let (_tmp, _out, d) =
                sandboxed(&format!("profile = \"{profile}\"\n"), DaemonOpts::default());
            let mut c = d.client().await;
            let mut other = start_params(&d, "acme.other", "ipc-host.js", &[]);
            other["waitReady"] = json!(true);
            let other = c.ok("host.start", other).await;
            let other_pid = other["pid"].as_i64();
            let r = caps_probe(&mut c, &d, "acme.probe", other_pid).await;
            for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
                assert_eq!(r[set], "0000000000000000", "{profile}: {set} in {r}");
            }
            // The bounding set can only be emptied by a daemon that holds
            // CAP_SETPCAP (root); an ordinary user's has nothing to bound.
            if root {
                assert_eq!(r["CapBnd"], "0000000000000000", "{profile}: {r}");
            }
            // The daemon is not dumpable: its environment is closed to
            // processes without CAP_SYS_PTRACE, in every profile (strict:
            // not even visible).
            assert_ne!(r["daemonEnviron"], "ok", "{profile}: {r}");
            if profile == "default" {
                // Landlock's ptrace scoping: neither the daemon's nor
                // another host's environment is readable.
                assert_eq!(r["daemonEnviron"], "EACCES", "{profile}: {r}");
                assert_eq!(r["otherEnviron"], "EACCES", "{profile}: {r}");
            }
        }
    })
    .await;
}

/// The uid a live process runs as (`Uid:` real).
fn proc_uid(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_runs_hosts_as_that_user_with_their_dirs_and_no_way_to_the_control_socket() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    timed(async {
        assert!(
            nix::unistd::geteuid().is_root(),
            "run_as needs a root daemon; CI runs the suite as root"
        );
        let (tmp, out, d) = sandboxed("run_as = \"nobody\"\n", DaemonOpts::default());
        // The test's own temp dir must let `nobody` pass, as a home does.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::os::unix::fs::chown(&out, Some(65534), Some(65534)).unwrap();
        let mut c = d.client().await;
        let mut p = start_params(&d, "acme.user", "ipc-host.js", &[]);
        p["waitReady"] = json!(true);
        let st = c.ok("host.start", p).await;
        assert_eq!(st["ready"], true, "{st}");
        let pid = st["pid"].as_i64().unwrap() as i32;
        assert_eq!(proc_uid(pid), 65534);
        let r = c
            .ok(
                "host.request",
                json!({"extensionId": "acme.user", "type": "echo", "payload": [7]}),
            )
            .await;
        assert_eq!(r, json!([7]));
        let tmpdir = host_env(pid, "TMPDIR");
        assert_eq!(std::fs::metadata(&tmpdir).unwrap().uid(), 65534, "{tmpdir}");
        let ipc = host_env(pid, "DSCODE_IPC_URL");
        let ipc_dir = std::path::Path::new(ipc.strip_prefix("ipc://").unwrap())
            .parent()
            .unwrap()
            .to_path_buf();
        let meta = std::fs::metadata(&ipc_dir).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (65534, 0o700));

        // The control socket is root's and 0600: no process of the host
        // can even connect.
        let text = control_probe(&mut c, &d).await;
        for who in ["host", "child", "setsid"] {
            assert!(
                text.iter()
                    .any(|t| *t == format!("control {who} refused EACCES")),
                "{who}: {text:?}"
            );
        }
        let info = c.ok("daemon.info", json!({})).await;
        assert!(info["pid"].is_u64());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_of_a_host_can_use_the_control_socket() {
    timed(async {
        // With a cgroup per host and without: the check at accept is by
        // cgroup, else by process group, session and ancestry.
        // The strict profile also hides the socket (layer 2a): ENOENT there.
        for cgroup in ["auto", "off", "strict"] {
            let keys = match cgroup {
                "strict" => "profile = \"strict\"\n".to_string(),
                c => format!("cgroup = \"{c}\"\n"),
            };
            let (_tmp, _out, d) = sandboxed(&keys, DaemonOpts::default());
            let mut c = d.client().await;
            let text = control_probe(&mut c, &d).await;
            for who in ["host", "child", "setsid"] {
                assert!(
                    text.iter()
                        .any(|t| t.starts_with(&format!("control {who} refused "))),
                    "cgroup {cgroup}, {who}: {text:?}"
                );
            }
            assert!(
                !text.iter().any(|t| t.contains(" answered ")),
                "cgroup {cgroup}: {text:?}"
            );
            // The daemon is untouched: running, and no host was started.
            let list = c.ok("host.list", json!({})).await;
            let ids: Vec<_> = list["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["extensionId"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(ids, ["acme.probe"], "cgroup {cgroup}");
            if cgroup == "strict" {
                // Hidden: not even a connection to refuse.
                assert!(
                    text.iter()
                        .all(|t| !t.contains(" refused ") || t.ends_with("ENOENT")),
                    "{text:?}"
                );
            } else {
                assert!(
                    d.log_text()
                        .contains("refused a control connection from a host's process"),
                    "cgroup {cgroup}"
                );
            }
        }
    })
    .await;
}

/// Run `control-probe.js` as host `acme.probe` against the daemon's control
/// socket; its output lines once the host, its child and a `setsid`
/// escapee have each tried.
async fn control_probe(c: &mut Client, d: &Daemon) -> Vec<String> {
    let probe = start_params(
        d,
        "acme.probe",
        "control-probe.js",
        &[d.socket.to_str().unwrap()],
    );
    c.ok("host.start", probe).await;
    wait_for_output(c, "acme.probe", "control done")
        .await
        .iter()
        .filter_map(|l| Some(l["text"].as_str()?.to_string()))
        .collect()
}
