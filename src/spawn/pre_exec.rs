//! The steps a host's forked child runs before exec (Linux), each a
//! `pre_exec` closure of raw syscalls only: the `run_as` identity switch
//! (step 1b), PDEATHSIG with the parent check (step 2), joining the host's
//! cgroups (step 3). [`super::spawn`] registers them in that order.

use tokio::process::Command;

use super::{HostUser, LaunchSpec};

/// Pre-exec step 2: PDEATHSIG = SIGKILL, then make sure the daemon did not
/// die before it was set.
pub(super) fn die_with_daemon(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: runs in the forked child before exec. It makes two raw
    // syscalls (prctl, getppid) and builds errors from raw errno values:
    // no allocation, no locks, no logging, no panics.
    unsafe {
        cmd.pre_exec(move || {
            // PDEATHSIG fires when the *thread* that forked exits, hence the
            // dedicated spawner thread.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)?;
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(
                    nix::errno::Errno::ESRCH as i32,
                ));
            }
            Ok(())
        });
    }
}

/// Pre-exec step 1b (root daemons with `run_as`): no supplementary groups,
/// then the user's group and uid (real, effective, saved). The process is
/// left non-dumpable, as the kernel makes it: other processes of that user
/// cannot read its memory or `/proc` files. Comes before PDEATHSIG, which a
/// change of credentials clears.
pub(super) fn become_user(cmd: &mut Command, user: Option<HostUser>) {
    let Some(HostUser { uid, gid }) = user else {
        return;
    };
    // SAFETY: raw syscalls only (setgroups, setresgid, setresuid) with
    // integers captured by value; no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Pre-exec step 3: join the host's cgroups through the `cgroup.procs`
/// descriptors the parent opened.
pub(super) fn join_cgroup(cmd: &mut Command, spec: &LaunchSpec) {
    use std::os::fd::AsRawFd;
    for procs in &spec.cgroup_procs {
        let fd = procs.as_raw_fd();
        // SAFETY: one write(2) in the child on a descriptor the parent keeps
        // open until the spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                let procs = std::os::fd::BorrowedFd::borrow_raw(fd);
                nix::unistd::write(procs, b"0").map_err(std::io::Error::from)?;
                Ok(())
            });
        }
    }
}
