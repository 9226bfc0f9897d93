//! Both spawn paths, on real children (`/bin/sh`, `/bin/cat`): what the
//! host sees (argv, env, cwd, stdio, signals, group, sandbox, cgroup) must
//! not depend on the path, and `Auto` must really be `clone3` here.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::super::{ExitOutcome, LaunchSpec, SpawnError, Spawned, spawn_by};
use super::*;

const PATHS: [SpawnPath; 2] = [SpawnPath::Auto, SpawnPath::Fork];

fn sh(script: &str) -> LaunchSpec {
    LaunchSpec::plain("/bin/sh", &["-c", script])
}

fn spawned(spec: &LaunchSpec, path: SpawnPath) -> Spawned {
    let s = spawn_by(spec, path).unwrap();
    let by_pidfd = format!("{:?}", s.child).contains("pidfd");
    assert_eq!(by_pidfd, path == SpawnPath::Auto, "{path:?}: {:?}", s.child);
    s
}

/// Run to the end: how it ended, and its stdout.
async fn run(spec: &LaunchSpec, path: SpawnPath) -> (ExitOutcome, String) {
    let mut s = spawned(spec, path);
    let mut out = String::new();
    let mut stdout = s.child.stdout.take().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        stdout.read_to_string(&mut out).await.unwrap();
        s.child.wait().await.unwrap()
    })
    .await
    .expect("the child did not finish within 10 s");
    (status.into(), out)
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn the_switch_reads_fork_or_auto() {
    assert_eq!(SpawnPath::parse(None), SpawnPath::Auto);
    assert_eq!(SpawnPath::parse(Some(OsStr::new("fork"))), SpawnPath::Fork);
    assert_eq!(
        SpawnPath::parse(Some(OsStr::new("clone3"))),
        SpawnPath::Auto
    );
    assert_eq!(SpawnPath::parse(Some(OsStr::new("auto"))), SpawnPath::Auto);
    assert_eq!(SpawnPath::parse(Some(OsStr::new("vfork"))), SpawnPath::Auto);
}

#[tokio::test]
async fn exit_code_stdout_stderr_argv_env_and_cwd() {
    for path in PATHS {
        let mut spec =
            sh(r#"printf '%s|%s|%s|%s' "$0" "$1" "$GREETING" "$(pwd)"; echo oops >&2; exit 3"#);
        spec.args.extend(["zero".into(), "one two".into()]);
        spec.env.insert("GREETING".into(), "hé llo".into());
        spec.cwd = "/tmp".into();
        let mut s = spawned(&spec, path);
        let mut err = String::new();
        let mut stderr = s.child.stderr.take().unwrap();
        let mut out = String::new();
        let mut stdout = s.child.stdout.take().unwrap();
        stdout.read_to_string(&mut out).await.unwrap();
        stderr.read_to_string(&mut err).await.unwrap();
        let status = s.child.wait().await.unwrap();
        assert_eq!(ExitOutcome::from(status).code, Some(3), "{path:?}");
        assert_eq!(out, "zero|one two|hé llo|/tmp", "{path:?}");
        assert_eq!(err, "oops\n", "{path:?}");
        // Waiting again gives the same answer.
        assert_eq!(s.child.wait().await.unwrap(), status);
        assert_eq!(s.child.try_wait().unwrap(), Some(status));
    }
}

#[tokio::test]
async fn a_signal_is_reported_as_such() {
    for path in PATHS {
        let (outcome, _) = run(&sh("kill -9 $$"), path).await;
        assert_eq!((outcome.code, outcome.signal), (None, Some(9)), "{path:?}");
    }
}

#[tokio::test]
async fn stdin_is_dev_null_and_signals_are_at_their_defaults() {
    for path in PATHS {
        let spec = LaunchSpec::plain("/bin/cat", &["/proc/self/status"]);
        let (outcome, status) = run(&spec, path).await;
        assert_eq!(outcome.code, Some(0));
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .trim()
                .to_string()
        };
        // The test harness ignores SIGPIPE (Rust's runtime does); the host
        // must not inherit that (as std does, other ignored signals stay
        // ignored), nor any blocked signal, nor a handler.
        let ours = std::fs::read_to_string("/proc/self/status").unwrap();
        let ignored = |status: &str| {
            let hex = status
                .lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .unwrap();
            u64::from_str_radix(hex.trim(), 16).unwrap()
        };
        let sigpipe = 1u64 << (libc::SIGPIPE - 1);
        assert_eq!(ignored(&status), ignored(&ours) & !sigpipe, "{path:?}");
        assert_eq!(field("SigCgt:"), "0000000000000000", "{path:?}");
        assert_eq!(field("SigBlk:"), "0000000000000000", "{path:?}");
        let (_, stdin) = run(&sh("readlink /proc/self/fd/0"), path).await;
        assert_eq!(stdin, "/dev/null\n", "{path:?}");
    }
}

#[tokio::test]
async fn a_missing_program_is_an_exec_error_with_enoent() {
    for path in PATHS {
        let spec = LaunchSpec::plain("/nonexistent/node", &["x.js"]);
        match spawn_by(&spec, path) {
            Err(SpawnError::Exec { path: p, source }) => {
                assert_eq!(p, std::path::Path::new("/nonexistent/node"));
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT), "{path:?}");
            }
            Err(e) => panic!("{path:?}: {e}"),
            Ok(_) => panic!("{path:?}: spawned a missing program"),
        }
        let mut spec = sh("exit 0");
        spec.cwd = "/nonexistent".into();
        assert!(
            matches!(spawn_by(&spec, path), Err(SpawnError::Exec { source, .. }) if source.raw_os_error() == Some(libc::ENOENT)),
            "{path:?}: a missing cwd"
        );
    }
}

#[tokio::test]
async fn the_verified_descriptor_is_what_runs() {
    for path in PATHS {
        let mut spec = sh("echo via fd");
        // The path names nothing: only the descriptor can run.
        spec.node = "/nonexistent/sh".into();
        spec.exec_fd = Some(std::sync::Arc::new(std::fs::File::open("/bin/sh").unwrap()));
        let (outcome, out) = run(&spec, path).await;
        assert_eq!(
            (outcome.code, out.as_str()),
            (Some(0), "via fd\n"),
            "{path:?}"
        );
    }
}

#[tokio::test]
async fn the_host_leads_its_group_and_is_sandboxed() {
    for path in PATHS {
        let mut spec = sh("sleep 100");
        spec.sandbox = Some(crate::sandbox::SandboxPolicy::default());
        let s = spawned(&spec, path);
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.pid)).unwrap();
        let (_, pgrp) = crate::spawn::parse_stat_state_pgrp(&stat).unwrap();
        assert_eq!(pgrp, s.pid as i32, "{path:?}");
        assert_eq!(s.group.id(), s.pid as i32);
        assert_eq!(status_field(s.pid, "NoNewPrivs"), "1", "{path:?}");
        assert_eq!(status_field(s.pid, "Seccomp"), "2", "{path:?}");
        assert_eq!(status_field(s.pid, "CapEff"), "0000000000000000");
        s.group.signal(crate::spawn::StopSignal::Kill);
        let mut child = s.child;
        let status = child.wait().await.unwrap();
        assert_eq!(ExitOutcome::from(status).signal, Some(9));
    }
}

/// PDEATHSIG follows the thread that spawned: spawned from a thread that
/// then ends, the host is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_host_dies_with_the_thread_that_spawned_it() {
    for path in PATHS {
        let rt = tokio::runtime::Handle::current();
        let spec = sh("sleep 100");
        let mut s = std::thread::spawn(move || {
            let _rt = rt.enter();
            spawned(&spec, path)
        })
        .join()
        .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), s.child.wait())
            .await
            .expect("PDEATHSIG did not fire")
            .unwrap();
        assert_eq!(ExitOutcome::from(status).signal, Some(9), "{path:?}");
    }
}

/// With a cgroup2 cgroup: the host is in it (by `CLONE_INTO_CGROUP` on the
/// clone3 path, by its own `cgroup.procs` write on the fork path).
#[tokio::test]
async fn the_host_is_in_its_cgroup() {
    let Some(root) = crate::cgroup::detect() else {
        eprintln!("skipped: no writable cgroup2 subtree");
        return;
    };
    let roots = crate::spawn::CgroupRoots {
        v2: Some(root),
        ..Default::default()
    };
    for path in PATHS {
        let mut spec = sh("sleep 100");
        let cgroups = crate::spawn::Cgroups::make(
            "unit.clone3",
            &roots,
            crate::spawn::Limits::default(),
            &mut spec,
        );
        assert!(spec.cgroup_dir.is_some());
        let s = spawned(&spec, path);
        if path == SpawnPath::Auto {
            // Placed by the kernel, not by a cgroup.procs write of its own.
            assert_eq!(LEARNT.into_cgroup.load(Ordering::Relaxed), WORKS);
        }
        end_in_cgroup(s, cgroups, &format!("{path:?}")).await;
    }
}

/// Assert `s` is in the cgroup2 cgroup of `cgroups`, then kill and reap it
/// and remove the cgroup.
async fn end_in_cgroup(s: Spawned, cgroups: crate::spawn::Cgroups, what: &str) {
    let pid = s.pid;
    let contained = cgroups.contain(s.group);
    let dir = contained.cgroup_dir().unwrap();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v2 = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    assert!(
        dir.ends_with(v2.trim_start_matches('/')),
        "{what}: {v2} vs {}",
        dir.display()
    );
    let listed = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    assert!(
        listed.lines().any(|l| l == pid.to_string()),
        "{what}: {listed}"
    );
    contained.kill();
    let mut child = s.child;
    child.wait().await.unwrap();
    contained.release(&crate::spawn::Cleanup::start());
}

#[test]
fn the_probe_decides_on_the_errnos() {
    use libc::{E2BIG, EBADF, EINVAL, ENOSYS, EPERM};
    let table = [
        ((EINVAL, EBADF), Ok(())),
        // No clone3 (before 5.3, or a container's seccomp answer).
        ((ENOSYS, EBADF), Err(Unusable::Clone3(ENOSYS))),
        // Filtered: snap, systemd's SystemCallFilter, containers.
        ((EPERM, EBADF), Err(Unusable::Clone3(EPERM))),
        ((E2BIG, EBADF), Err(Unusable::Clone3(E2BIG))),
        ((0, EBADF), Err(Unusable::Clone3(0))),
        // Linux 5.3: clone3 and CLONE_PIDFD, no waitid(P_PIDFD).
        ((EINVAL, EINVAL), Err(Unusable::WaitPidfd(EINVAL))),
        ((EINVAL, EPERM), Err(Unusable::WaitPidfd(EPERM))),
        ((EINVAL, ENOSYS), Err(Unusable::WaitPidfd(ENOSYS))),
        ((ENOSYS, EINVAL), Err(Unusable::Clone3(ENOSYS))),
    ];
    for ((clone3, waitid), want) in table {
        assert_eq!(
            decide(clone3, waitid),
            want,
            "clone3 {clone3}, waitid {waitid}"
        );
    }
}

/// This kernel (≥ 5.4, unfiltered, 64-bit) answers the probe as documented:
/// the other tests rely on `Auto` being clone3 here.
#[test]
fn the_probe_finds_clone3_usable_here() {
    assert_eq!(probe(), Ok(()));
    assert!(probed() && !unavailable());
}

#[test]
fn a_failed_clone_is_read_by_its_errno_and_what_worked_before() {
    use libc::{E2BIG, EACCES, EBUSY, EINVAL, ENOSYS, EPERM};
    // (errno, with CLONE_INTO_CGROUP, clone3 worked, it worked) → next.
    let table = [
        // Missing or filtered clone3, before any clone succeeded.
        ((ENOSYS, false, false, false), Next::Fork),
        ((EPERM, true, false, false), Next::Fork),
        // ... but after one did, a real error.
        ((EPERM, false, true, false), Next::Fail),
        ((ENOSYS, true, true, true), Next::Fail),
        // Linux 5.3–5.6: with CLONE_INTO_CGROUP, EINVAL (unknown flag) or
        // E2BIG (a larger struct); also after a clone without it worked.
        ((EINVAL, true, false, false), Next::WithoutIntoCgroup),
        ((E2BIG, true, false, false), Next::WithoutIntoCgroup),
        ((EINVAL, true, true, false), Next::WithoutIntoCgroup),
        ((E2BIG, true, true, false), Next::WithoutIntoCgroup),
        // Once a clone into a cgroup worked, EINVAL is a real error.
        ((EINVAL, true, true, true), Next::Fail),
        // Without it: the clone3 itself is refused, unless it worked.
        ((EINVAL, false, false, false), Next::Fork),
        ((EINVAL, false, true, false), Next::Fail),
        // Other errors fail the start.
        ((EBUSY, true, false, false), Next::Fail),
        ((EACCES, false, false, false), Next::Fail),
    ];
    for ((errno, into, clone3_works, into_works), want) in table {
        assert_eq!(
            after_failure(Some(errno), into, clone3_works, into_works),
            want,
            "errno {errno}, into {into}, clone3 {clone3_works}, into {into_works}"
        );
    }
    assert_eq!(after_failure(None, true, false, false), Next::Fail);
}

/// A first clone without a cgroup works; a later one asking for
/// `CLONE_INTO_CGROUP` gets EINVAL, as on Linux 5.3–5.6 (here: a cgroup
/// descriptor above INT_MAX, which this kernel answers so). The spawn is
/// retried without it and the host joins its cgroup itself, then and after.
#[tokio::test]
async fn without_clone_into_cgroup_the_host_joins_its_cgroup_itself() {
    let Some(root) = crate::cgroup::detect() else {
        eprintln!("skipped: no writable cgroup2 subtree");
        return;
    };
    let roots = crate::spawn::CgroupRoots {
        v2: Some(root),
        ..Default::default()
    };
    let learnt = Learnt::new();
    let s = spawn_learning(&learnt, &sh("exit 0"), None, None)
        .unwrap()
        .unwrap();
    let mut child = s.child;
    child.wait().await.unwrap();
    assert_eq!(learnt.clone3.load(Ordering::Relaxed), WORKS);
    assert_eq!(learnt.into_cgroup.load(Ordering::Relaxed), UNTRIED);
    for (round, into) in [(1, -1), (2, 0)] {
        let mut spec = sh("sleep 100");
        let id = format!("unit.clone3.nointo{round}");
        let cgroups = crate::spawn::Cgroups::make(&id, &roots, Default::default(), &mut spec);
        let into = match into {
            -1 => -1,
            _ => spec.cgroup_dir.as_ref().unwrap().as_raw_fd(),
        };
        let s = spawn_learning(&learnt, &spec, None, Some(into))
            .unwrap()
            .expect("spawned by clone3");
        assert_eq!(learnt.into_cgroup.load(Ordering::Relaxed), REFUSED);
        end_in_cgroup(s, cgroups, &format!("round {round}")).await;
    }
}

/// Dropped unreaped outside any runtime, a process is reaped all the same.
#[test]
fn a_process_dropped_without_a_runtime_is_reaped() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = {
        let _rt = rt.enter();
        spawned(&sh("sleep 0.2"), SpawnPath::Auto)
    };
    drop(rt);
    let pid = s.pid;
    drop(s);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{pid} was never reaped"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A process dropped before it was waited for is still reaped (no zombie).
#[tokio::test]
async fn a_dropped_process_is_reaped() {
    let s = spawned(&sh("exit 0"), SpawnPath::Auto);
    let pid = s.pid;
    drop(s);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{pid} was never reaped"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
