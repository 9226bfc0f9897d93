//! The sandbox's unit tests (beside `sandbox.rs`, which is long enough).

use super::*;

fn gaps(keep: &[RawFd]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for_each_gap(keep, |lo, hi| {
        out.push((lo, hi));
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn the_descriptor_sweep_skips_stdio_and_kept_descriptors() {
    const MAX: u32 = u32::MAX;
    type Case = (&'static [RawFd], &'static [(u32, u32)]);
    let table: &[Case] = &[
        (&[], &[(3, MAX)]),
        (&[0, 1, 2], &[(3, MAX)]),
        (&[3], &[(4, MAX)]),
        (&[5], &[(3, 4), (6, MAX)]),
        (&[5, 6, 9], &[(3, 4), (7, 8), (10, MAX)]),
        (&[-1, 4], &[(3, 3), (5, MAX)]),
    ];
    for (keep, want) in table {
        assert_eq!(gaps(keep), *want, "keep {keep:?}");
    }
}

#[test]
fn kept_descriptors_stay_sorted_and_unique() {
    let mut p = prepare(&SandboxPolicy {
        off: true,
        ..Default::default()
    })
    .unwrap();
    for fd in [9, 4, 9, 6] {
        p.keep_open(fd);
    }
    assert_eq!(p.keep, vec![4, 6, 9]);
}

#[test]
fn the_profile_builds() {
    let p = prepare(&SandboxPolicy {
        writable: vec![std::env::temp_dir()],
        ..Default::default()
    })
    .unwrap();
    assert!(p.ruleset.is_some() && p.bpf.is_some());
    assert!(
        prepare(&SandboxPolicy {
            off: true,
            ..Default::default()
        })
        .unwrap()
        .bpf
        .is_none()
    );
    let s = support();
    assert!(s.landlock.starts_with('v') || s.landlock == "unsupported");
}

/// Before Linux 5.11 `close_range(CLOSE_RANGE_CLOEXEC)` is EINVAL and the
/// sweep marks one descriptor at a time up to RLIMIT_NOFILE: a lower
/// `max_open_files` must not hide an inherited descriptor above it. A real
/// child, whose `close_range` a seccomp filter answers EINVAL as such a
/// kernel does, inherits one at the top of the daemon's limit.
#[test]
fn a_lower_open_file_limit_does_not_shorten_the_sweep() {
    use std::os::unix::process::CommandExt;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(got, 0);
    let high = (limit.rlim_cur.min(1 << 20) - 1) as RawFd;
    let max_open_files = 64;
    assert!(high >= max_open_files as RawFd, "limit {}", limit.rlim_cur);
    let before_5_11: BpfProgram = SeccompFilter::new(
        [(libc::SYS_close_range, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EINVAL as u32),
        target_arch().unwrap(),
    )
    .unwrap()
    .try_into()
    .unwrap();
    let mut prepared = prepare(&SandboxPolicy {
        off: true,
        max_open_files: Some(max_open_files),
        ..Default::default()
    })
    .unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    let null = null.as_raw_fd();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c").arg(format!(
        "[ -e /proc/self/fd/{high} ] && echo open || echo closed"
    ));
    // SAFETY: in the forked child, raw syscalls only: dup2, the filter's
    // prctl and seccomp on a program built above, `Prepared::apply`.
    unsafe {
        cmd.pre_exec(move || {
            // Inherited without close-on-exec (dup2 clears it).
            if libc::dup2(null, high) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            seccompiler::apply_filter(&before_5_11)
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))?;
            prepared.apply()
        });
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "closed\n");
}
