//! The strict sandbox profile's spawn (Linux): Node inside `bwrap`, with the
//! seccomp filter handed over as a descriptor and, for a root daemon, the
//! capability dropper in front of Node.

use std::process::Stdio;

use tokio::process::Command;

use super::pre_exec::{die_with_daemon, join_cgroup};
use super::{LaunchSpec, SpawnError, Spawned, finish_spawn};

/// The strict profile: `bwrap --unshare-pid --die-with-parent [--unshare-net]
/// --ro-bind / / --dev /dev --proc /proc --tmpfs H … --bind W W … --seccomp FD
/// -- node …`.
pub(super) fn spawn_strict(
    spec: &LaunchSpec,
    policy: &crate::sandbox::SandboxPolicy,
    mut prepared: crate::sandbox::Prepared,
) -> Result<Spawned, SpawnError> {
    use std::os::fd::AsRawFd;
    let bwrap = crate::sandbox::bwrap_path()?;
    let bpf_fd = prepared
        .bwrap_seccomp
        .as_ref()
        .expect("the strict profile has a seccomp memfd")
        .as_raw_fd();
    let mut cmd = Command::new(&bwrap);
    // A root daemon's bwrap keeps only CAP_SETPCAP for the cap dropper,
    // which execs Node with no capability at all (see `strict_cap_dropper`).
    let root = nix::unistd::geteuid().is_root();
    let dropper = if root {
        crate::sandbox::strict_cap_dropper()?
    } else {
        Vec::new()
    };
    cmd.args(["--unshare-pid", "--die-with-parent", "--cap-drop", "ALL"]);
    if root {
        cmd.args(["--cap-add", "CAP_SETPCAP"]);
    }
    if policy.deny_network {
        cmd.arg("--unshare-net");
    }
    cmd.args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]);
    for h in policy.hidden.iter().filter(|p| p.exists()) {
        cmd.arg("--tmpfs").arg(h);
    }
    for w in policy.writable.iter().filter(|p| p.exists()) {
        cmd.arg("--bind").arg(w).arg(w);
    }
    cmd.arg("--seccomp").arg(bpf_fd.to_string());
    cmd.arg("--chdir").arg(&spec.cwd);
    cmd.arg("--");
    cmd.args(&dropper);
    match &spec.exec_fd {
        Some(f) => {
            // The verified descriptor survives into the sandbox; its new
            // /proc shows it as the inner process's own fd.
            let fd = f.as_raw_fd();
            prepared.keep_open(fd);
            cmd.arg(format!("/proc/self/fd/{fd}"));
            // SAFETY: one fcntl(2) in the child on a descriptor the parent keeps open.
            unsafe {
                cmd.pre_exec(move || {
                    let f = std::os::fd::BorrowedFd::borrow_raw(fd);
                    nix::fcntl::fcntl(
                        f,
                        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                    )
                    .map_err(std::io::Error::from)?;
                    Ok(())
                });
            }
        }
        None => {
            cmd.arg(&spec.node);
        }
    }
    cmd.args(&spec.node_args).arg(&spec.entry).args(&spec.args);
    cmd.current_dir(&spec.cwd)
        .env_clear()
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false)
        .process_group(0);
    die_with_daemon(&mut cmd);
    join_cgroup(&mut cmd, spec);
    // SAFETY: raw syscalls only (setrlimit, fcntl, prctl) on state built in the parent.
    unsafe {
        cmd.pre_exec(move || prepared.apply());
    }
    let mut spawned = finish_spawn(cmd, spec);
    if let Err(SpawnError::Exec { path, .. }) = &mut spawned {
        *path = bwrap;
    }
    spawned
}
