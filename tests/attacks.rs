//! Other local users, and files the daemon did not write, are outside the
//! boundary: planted `running.json` records, a file at the socket path,
//! squatted fallback directories, config files others can write.

// Drives real processes with Unix signals, sockets, /proc and setpriv.
#![cfg(unix)]

mod common;
mod launch;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use launch::{Setup, chmod, launch, mode, temp_dir};
use serde_json::json;

const S10: Duration = Duration::from_secs(10);

/// A process started by the test in a session (and process group) of its
/// own; `sh -c script`, stdout piped.
fn setsid_sh(script: &str) -> Child {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: setsid(2) only, in the forked child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_string()
}

/// Field 22 of /proc/<pid>/stat, as `running.json` records it.
fn start_time(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

/// A cgroup2 cgroup beside the daemon's root (`<root>/../<name>`), holding
/// `pid`; `None` where the test cannot make one.
fn sibling_cgroup(root: &str, name: &str, pid: i32) -> Option<PathBuf> {
    let dir = Path::new(root).parent()?.join(name);
    std::fs::create_dir(&dir).ok()?;
    if std::fs::write(dir.join("cgroup.procs"), pid.to_string()).is_err() {
        let _ = std::fs::remove_dir(&dir);
        return None;
    }
    Some(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_running_json_kills_nothing_the_daemon_did_not_start() {
    timed(async {
        let (_tmp, dir) = temp_dir();
        let args = launch::args_in(&dir, "");
        // A first daemon, to learn its cgroup root and make the state dir.
        let mut first = launch(&dir, &args, &[], Setup::default());
        first.wait_for_log("listening", S10).await;
        let mut c = Client::connect(&dir.join("run/hostd.sock")).await;
        let info = c.ok("daemon.info", json!({})).await;
        let root = info["sandbox"]["cgroup"].as_str().unwrap_or("").to_string();
        signal(first.pid(), SIGTERM);
        first.wait_exit(S10).await;

        // 1: a live group leader of ours, recorded with its true start time.
        let mut leader = setsid_sh("echo $$; exec sleep 60");
        let leader_pid: i32 = first_line(&mut leader).parse().unwrap();
        // 2: a group whose leader is gone, a member left behind.
        let mut gone = setsid_sh("sleep 60 & echo $!; read x");
        let orphan: i32 = first_line(&mut gone).parse().unwrap();
        let gone_pid = gone.id() as i32;
        let gone_start = start_time(gone_pid);
        drop(gone.stdin.take());
        gone.wait().unwrap();
        // 3: a process in a cgroup outside the daemon's root.
        let mut caged = setsid_sh("echo $$; exec sleep 60");
        let caged_pid: i32 = first_line(&mut caged).parse().unwrap();
        let cage = (!root.is_empty())
            .then(|| sibling_cgroup(&root, &format!("hostd-attack-{}", std::process::id()), caged_pid))
            .flatten();
        if cage.is_none() {
            eprintln!("no sibling cgroup could be made (needs root and cgroup2): the cgroup records are not exercised");
        }

        let mut records = vec![
            json!({"extensionId": "forged.leader", "pid": leader_pid, "pgid": leader_pid, "startTime": start_time(leader_pid)}),
            json!({"extensionId": "forged.gone", "pid": gone_pid, "pgid": gone_pid, "startTime": gone_start}),
            json!({"extensionId": "forged.member", "pid": 999_999_999, "pgid": leader_pid, "startTime": 0}),
        ];
        if let Some(cage) = &cage {
            let dotted = Path::new(&root).join("..").join(cage.file_name().unwrap());
            for (id, path) in [("forged.dotdot", dotted), ("forged.cgroup", cage.clone())] {
                records.push(json!({"extensionId": id, "pid": caged_pid, "pgid": caged_pid, "startTime": 1, "cgroup": path}));
            }
        }
        let file = dir.join("state/running.json");
        std::fs::write(&file, serde_json::to_string(&records).unwrap()).unwrap();
        chmod(&file, 0o600);

        let mut second = launch(&dir, &args, &[], Setup::default());
        second.wait_for_log("listening", S10).await;
        let survivors = [
            ("a live leader not started by the daemon", leader_pid),
            ("a member of a group whose leader is gone", orphan),
            ("a process in a cgroup outside the daemon's root", caged_pid),
        ];
        for (what, pid) in survivors {
            assert!(process_alive(pid), "{what} was killed:\n{}", second.log_text());
        }
        let log = second.log_text();
        // Each record is reported, none as reaped.
        assert!(!log.contains("reaped=true"), "{log}");
        assert!(log.contains("is not one of this daemon's hosts"), "{log}");
        assert!(log.contains("does not name a process-group leader"), "{log}");
        if cage.is_some() {
            assert!(log.contains("not under this daemon's cgroup root"), "{log}");
        }

        for pid in [leader_pid, orphan, caged_pid] {
            signal(pid, SIGKILL);
        }
        let _ = leader.wait();
        let _ = caged.wait();
        if let Some(cage) = cage {
            eventually(S10, "the test's cgroup empties", || {
                std::fs::read_to_string(cage.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty())
            })
            .await;
            let _ = std::fs::remove_dir(&cage);
        }
    })
    .await;
}

/// What the daemon did start is still reaped, through the process group
/// and the hosts' environment alone (no cgroup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_leftover_is_still_reaped_without_a_cgroup() {
    timed(async {
        let (_tmp, dir) = temp_dir();
        let config = format!(
            "[sandbox]\ncgroup = \"off\"\nwritable_paths = [\"{}\"]\n",
            dir.display()
        );
        let args = launch::args_in(&dir, &config);
        let mut first = launch(&dir, &args, &[], Setup::default());
        first.wait_for_log("listening", S10).await;
        let mut c = Client::connect(&dir.join("run/hostd.sock")).await;
        c.ok(
            "host.start",
            first.start_params("acme.tree", "fork-grandchild.js"),
        )
        .await;
        let grandchild = output_pid(&mut c, "acme.tree", "sleep ").await;
        eventually(S10, "running.json records the host", || {
            std::fs::read_to_string(dir.join("state/running.json"))
                .is_ok_and(|t| t.contains("acme.tree"))
        })
        .await;
        signal(first.pid(), SIGKILL);
        first.wait_exit(S10).await;
        assert!(process_alive(grandchild), "the leftover this test is about");
        let mut second = launch(&dir, &args, &[], Setup::default());
        second.wait_for_log("listening", S10).await;
        eventually(S10, "the leftover grandchild is reaped", || {
            !process_alive(grandchild)
        })
        .await;
        assert!(
            second.log_text().contains("reaped=true"),
            "{}",
            second.log_text()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_socket_is_ever_removed_from_the_socket_path() {
    timed(async {
        let (_tmp, dir) = temp_dir();
        let run = dir.join("run");
        std::fs::create_dir(&run).unwrap();
        chmod(&run, 0o700);
        let notes = run.join("notes.txt");
        std::fs::write(&notes, "my notes\n").unwrap();
        let link = run.join("link.sock");
        std::os::unix::fs::symlink(&notes, &link).unwrap();
        let subdir = run.join("dir.sock");
        std::fs::create_dir(&subdir).unwrap();
        for (path, kind) in [
            (&notes, "a regular file"),
            (&link, "a symbolic link"),
            (&subdir, "a directory"),
        ] {
            let args: Vec<OsString> = vec![
                "--socket".into(),
                path.into(),
                "--state-dir".into(),
                dir.join("state").into(),
            ];
            let mut d = launch(&dir, &args, &[], Setup::default());
            let (status, err) = d.wait_exit(S10).await;
            assert_eq!(status.code(), Some(1), "{err}");
            assert!(
                err.contains(&format!(
                    "refusing to use socket path {}: it is {kind}",
                    path.display()
                )),
                "{err}"
            );
        }
        assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes\n");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(subdir.is_dir());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_xdg_runtime_dir_the_default_socket_is_under_home_and_hostctl_agrees() {
    timed(async {
        let (_tmp, dir) = temp_dir();
        let home = dir.join("home");
        std::fs::create_dir(&home).unwrap();
        let args: Vec<OsString> = vec!["--state-dir".into(), dir.join("state").into()];
        let home_s = home.to_str().unwrap();
        let env = [("HOME", home_s)];
        let remove = vec!["XDG_RUNTIME_DIR", "XDG_STATE_HOME", "XDG_DATA_HOME"];
        let mut d = launch(
            &dir,
            &args,
            &env,
            Setup {
                remove_env: remove.clone(),
                ..Default::default()
            },
        );
        d.wait_for_log("listening", S10).await;
        let socket = home.join(".local/state/dscode-hostd/run/hostd.sock");
        assert!(socket.exists(), "{}", d.log_text());
        assert_eq!(mode(socket.parent().unwrap()), 0o700);
        let mut ctl = Command::new(env!("CARGO_BIN_EXE_dscode-hostctl"));
        ctl.args(["--json", "call", "daemon.info"])
            .env("HOME", &home);
        for k in remove.iter().chain(&["DSCODE_HOSTD_SOCKET"]) {
            ctl.env_remove(k);
        }
        let out = tokio::task::spawn_blocking(move || ctl.output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(info["socket"], socket.to_str().unwrap(), "{info}");
        assert_eq!(info["pid"], d.pid(), "{info}");
    })
    .await;
}

/// `nobody` has no home (`/nonexistent`): its state and socket fall back
/// to per-uid directories under /tmp, which another user (root here) may
/// have created first. The daemon says so instead of using them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_home_the_fallbacks_are_per_uid_and_a_squatted_one_is_refused() {
    timed(async {
        let (_tmp, dir) = temp_dir();
        chmod(&dir, 0o755);
        let tmp = dir.join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        chmod(&tmp, 0o1777);
        let nobody_run = dir.join("nobody-run");
        std::fs::create_dir(&nobody_run).unwrap();
        chmod(&nobody_run, 0o700);
        nix::unistd::chown(&nobody_run, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let tmp_s = tmp.to_str().unwrap().to_string();
        let env = [("TMPDIR", tmp_s.as_str())];
        let setup = Setup {
            as_nobody: true,
            remove_env: vec!["HOME", "XDG_RUNTIME_DIR", "XDG_STATE_HOME", "XDG_DATA_HOME"],
            ..Default::default()
        };
        let socket_arg: Vec<OsString> =
            vec!["--socket".into(), nobody_run.join("hostd.sock").into()];
        let state = tmp.join("dscode-hostd-state-65534");

        // Squatted by another user (root): refused, with a fix nobody can apply.
        std::fs::create_dir(&state).unwrap();
        chmod(&state, 0o777);
        let mut d = launch(&dir, &socket_arg, &env, setup.clone());
        let (status, err) = d.wait_exit(S10).await;
        assert_ne!(status.code(), Some(0), "{err}");
        assert!(
            err.contains(&format!(
                "refusing to use state directory {}",
                state.display()
            )) && err.contains("owned by uid 0 (another user created it)")
                && err.contains("--state-dir"),
            "{err}"
        );
        std::fs::remove_dir(&state).unwrap();

        // Not squatted: created for uid 65534 alone.
        let mut d = launch(&dir, &socket_arg, &env, setup.clone());
        d.wait_for_log("listening", S10).await;
        let meta = std::fs::metadata(&state).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
        assert_eq!(mode(&state), 0o700);
        signal(d.pid(), SIGTERM);
        let (status, err) = d.wait_exit(S10).await;
        assert_eq!(status.code(), Some(0), "{err}");

        // The default socket's fallback, squatted the same way.
        let squat = Path::new("/tmp/dscode-hostd-65534");
        if squat.exists() {
            eprintln!(
                "{} exists already: the squatted-socket case is not exercised",
                squat.display()
            );
            return;
        }
        std::fs::create_dir(squat).unwrap();
        chmod(squat, 0o777);
        let mut d = launch(&dir, &[], &env, setup);
        let (status, err) = d.wait_exit(S10).await;
        let _ = std::fs::remove_dir(squat);
        assert_ne!(status.code(), Some(0), "{err}");
        assert!(
            err.contains("refusing to use socket directory /tmp/dscode-hostd-65534")
                && err.contains("owned by uid 0 (another user created it)")
                && err.contains("pass --socket"),
            "{err}"
        );
    })
    .await;
}

/// Start a daemon whose `--config` is `config`; its exit code and stderr.
async fn run_with_config(dir: &Path, config: &Path) -> (Option<i32>, String) {
    let args: Vec<OsString> = vec![
        "--socket".into(),
        dir.join("run/hostd.sock").into(),
        "--state-dir".into(),
        dir.join("state").into(),
        "--config".into(),
        config.into(),
    ];
    let mut d = launch(dir, &args, &[], Setup::default());
    let (status, err) = d.wait_exit(S10).await;
    (status.code(), err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_others_can_write_is_refused_at_start_and_at_reload() {
    timed(async {
        let (_tmp, dir) = temp_dir();
        let run = dir.join("run");
        std::fs::create_dir(&run).unwrap();
        chmod(&run, 0o700);
        let cfgdir = dir.join("cfg");
        std::fs::create_dir(&cfgdir).unwrap();
        chmod(&cfgdir, 0o755);
        let cfg = cfgdir.join("config.toml");
        let mut f = std::fs::File::create(&cfg).unwrap();
        writeln!(f, "stop_timeout_ms = 1000").unwrap();
        chmod(&cfg, 0o644);

        chmod(&cfg, 0o666);
        let (code, err) = run_with_config(&dir, &cfg).await;
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("writable by group or others (mode 0666)")
                && err.contains(&format!("chmod go-w {}", cfg.display())),
            "{err}"
        );
        chmod(&cfg, 0o644);

        chmod(&cfgdir, 0o777);
        let (code, err) = run_with_config(&dir, &cfg).await;
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains(&format!("its directory {} is writable", cfgdir.display())),
            "{err}"
        );
        chmod(&cfgdir, 0o755);

        nix::unistd::chown(&cfg, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let (code, err) = run_with_config(&dir, &cfg).await;
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("is owned by uid 65534"), "{err}");
        nix::unistd::chown(&cfg, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();

        // A symlink to a file in a directory anyone can write.
        let open = dir.join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        std::fs::copy(&cfg, open.join("real.toml")).unwrap();
        let link = cfgdir.join("linked.toml");
        std::os::unix::fs::symlink(open.join("real.toml"), &link).unwrap();
        let (code, err) = run_with_config(&dir, &link).await;
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains(&format!("its directory {} is writable", open.display())),
            "{err}"
        );

        // At reload: the old config is kept and the reason reported.
        let args: Vec<OsString> = vec![
            "--socket".into(),
            run.join("hostd.sock").into(),
            "--state-dir".into(),
            dir.join("state").into(),
            "--config".into(),
            cfg.clone().into(),
        ];
        let mut d = launch(&dir, &args, &[], Setup::default());
        d.wait_for_log("listening", S10).await;
        let mut c = Client::connect(&run.join("hostd.sock")).await;
        chmod(&cfg, 0o666);
        signal(d.pid(), 1); // SIGHUP
        d.wait_for_log("config reload failed", S10).await;
        let info = c.ok("daemon.info", json!({})).await;
        assert!(
            info["lastReloadError"]
                .as_str()
                .unwrap()
                .contains("writable by group or others"),
            "{info}"
        );
        let e = c.err("daemon.reload", json!({})).await;
        assert_eq!(e.code, -32007);
        assert!(e.message.contains("chmod go-w"), "{}", e.message);
        chmod(&cfg, 0o644);
        assert_eq!(c.ok("daemon.reload", json!({})).await, json!({"ok": true}));
        signal(d.pid(), SIGTERM);
        let (status, _) = d.wait_exit(S10).await;
        assert_eq!(status.code(), Some(0));
    })
    .await;
}
