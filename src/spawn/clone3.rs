//! Spawning a host by `clone3(CLONE_VFORK | CLONE_PIDFD | CLONE_INTO_CGROUP)`
//! (Linux; the default and `off` profiles — the strict profile keeps the
//! `fork` path, its child being bwrap).
//!
//! The kernel creates the child inside the host's cgroup2 cgroup: it is
//! contained from its first instruction, and no `cgroup.procs` write
//! migrates it (a migration takes `cgroup_threadgroup_rwsem` and waits for
//! an RCU grace period, 9–25 ms). The pidfd comes from the clone itself, so
//! the exit is waited for without a pid that could be reused
//! ([`super::HostProcess`]). Without `CLONE_VM` the child is a
//! copy-on-write copy of the calling thread only; `CLONE_VFORK` holds the
//! spawner thread until it has exec'd or exited, so the error pipe can be
//! read at once.
//!
//! Everything is built in the parent first: argv and envp as NUL-terminated
//! C arrays, the working directory, stdio (stdin `/dev/null`, stdout and
//! stderr pipes), the verified Node descriptor, the cgroup directory, a
//! close-on-exec error pipe, the sandbox ([`Prepared`]). The child then
//! makes raw syscalls only, in std's order for what std did and the old
//! `pre_exec` order after it (see `SECURITY.md`):
//!
//! 1. stdio onto 0, 1, 2 (`dup2`); 2. `chdir`; 3. its own process group
//!    (`setpgid(0, 0)`); 4. signals: every handler the daemon installed
//!    and the ignored `SIGPIPE` back to default, an empty mask;
//! 5. `run_as`: `setgroups`, `setresgid`, `setresuid` (raw, per thread:
//!    glibc's wrappers would broadcast to the daemon's other threads,
//!    which do not exist in the child); 6. PDEATHSIG and the `getppid`
//!    check; 7. the cgroups the kernel did not place it in (v1 limit
//!    cgroups on hybrid layouts; the cgroup2 one without
//!    `CLONE_INTO_CGROUP`): "0" to their `cgroup.procs`; 8. the sandbox
//!    (`Prepared::apply`: rlimits, descriptor sweep, capabilities,
//!    `NO_NEW_PRIVS`, Landlock, seccomp); 9. `execveat(fd, "", …,
//!    AT_EMPTY_PATH)` of the verified descriptor, or `execve` of the path.
//!
//! A failing step writes its errno to the error pipe and `_exit(127)`s;
//! the parent reaps it and reports `SpawnError::Exec`, as `std` does.
//!
//! Whether the path is usable is probed once, before the first host, and
//! logged at info: without `clone3` (ENOSYS), with it filtered (EPERM:
//! the seccomp filters of containers, snap, systemd's `SystemCallFilter`),
//! without `waitid(P_PIDFD)` (Linux 5.3) or on a 32-bit target, the caller
//! falls back to the `fork` path for the daemon's life; the first clones
//! can still turn it off the same way. `CLONE_INTO_CGROUP` is learnt
//! apart: where a clone asking for it fails with EINVAL or E2BIG before one
//! succeeded with it (Linux 5.3–5.6), the same spawn is retried without it
//! and the child joins the cgroup itself, then and from then on.
//! `DSCODE_HOSTD_SPAWN=fork` forces the fallback (read once).
//!
//! Over 500 lines with its long doc: the parent's preparation, the clone and
//! the child's steps stay in one file, since the child's soundness rests on
//! exactly what the parent built before it.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use super::process::HostProcess;
use super::{HostUser, LaunchSpec, ProcessGroup, SpawnError, Spawned};
use crate::sandbox::Prepared;

/// The environment variable that picks the spawn path.
pub const SPAWN_ENV: &str = "DSCODE_HOSTD_SPAWN";

/// How hosts are spawned on Linux (`DSCODE_HOSTD_SPAWN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnPath {
    /// `clone3` where the kernel has it, else `fork` (unset, `auto`, `clone3`).
    Auto,
    /// Always `fork` with `pre_exec` steps (`fork`).
    Fork,
}

impl SpawnPath {
    /// The daemon's choice, read from the environment once.
    pub fn configured() -> SpawnPath {
        static PATH: OnceLock<SpawnPath> = OnceLock::new();
        *PATH.get_or_init(|| {
            let path = SpawnPath::parse(std::env::var_os(SPAWN_ENV).as_deref());
            if path == SpawnPath::Fork {
                tracing::info!("hosts are forked: {SPAWN_ENV}=fork");
            }
            path
        })
    }

    fn parse(value: Option<&OsStr>) -> SpawnPath {
        match value.map(OsStr::to_str) {
            Some(Some("fork")) => SpawnPath::Fork,
            None | Some(Some("" | "auto" | "clone3")) => SpawnPath::Auto,
            Some(other) => {
                tracing::warn!(value = ?other, "{SPAWN_ENV} is not auto, clone3 or fork; using auto");
                SpawnPath::Auto
            }
        }
    }
}

/// `struct clone_args` (`linux/sched.h`), up to `cgroup` (size version 2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7), which libc's `c_int` cannot hold.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// What the spawns found this kernel to do: one for the daemon
/// ([`LEARNT`]); tests make their own.
struct Learnt {
    /// `clone3` itself: [`WORKS`] once a clone succeeded, [`REFUSED`] once
    /// one before it failed as a missing or filtered `clone3` does.
    clone3: AtomicU8,
    /// `CLONE_INTO_CGROUP`, learnt apart from `clone3` (Linux 5.3–5.6 have
    /// `clone3` without it): [`WORKS`] only once a clone that used it
    /// succeeded, [`REFUSED`] once one using it failed with EINVAL or E2BIG
    /// before that.
    into_cgroup: AtomicU8,
}

const UNTRIED: u8 = 0;
const WORKS: u8 = 1;
const REFUSED: u8 = 2;

impl Learnt {
    const fn new() -> Learnt {
        Learnt {
            clone3: AtomicU8::new(UNTRIED),
            into_cgroup: AtomicU8::new(UNTRIED),
        }
    }
}

static LEARNT: Learnt = Learnt::new();

/// Whether the `clone3` path is not usable here: so probed, or refused by a
/// clone since (then every spawn forks).
pub fn unavailable() -> bool {
    !probed() || LEARNT.clone3.load(Ordering::Relaxed) == REFUSED
}

/// Why the `clone3` path is not used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Unusable {
    /// Only x86_64, aarch64 and riscv64 take it. On 32-bit arm and x86
    /// (and m68k, sh, sparc) `SYS_setresuid`, `SYS_setresgid` and
    /// `SYS_setgroups` are the legacy 16-bit-id calls, which would truncate
    /// `run_as`'s ids (glibc's wrappers on the fork path pick the 32-bit
    /// ones); on mips the kernel's signal set is 128 bits, not the 64 the
    /// child's raw `rt_sigprocmask` passes.
    #[error("not a target the clone3 path is built for (x86_64, aarch64, riscv64)")]
    Target,
    /// `clone3(NULL, 0)` answered this instead of EINVAL: ENOSYS (before
    /// Linux 5.3, or a container's seccomp profile), EPERM (a seccomp
    /// filter: containers, snap, systemd's `SystemCallFilter`).
    #[error("clone3 is missing or filtered (errno {0})")]
    Clone3(i32),
    /// `waitid(P_PIDFD, <no such descriptor>)` answered this instead of
    /// EBADF: EINVAL before Linux 5.4 (5.3 has `clone3` and `CLONE_PIDFD`
    /// but cannot wait on a pidfd), or a filter's answer.
    #[error("waitid(P_PIDFD) is missing or filtered (errno {0})")]
    WaitPidfd(i32),
}

/// Whether this kernel gives the `clone3` path what it needs, probed on
/// first use; logs once, at info, which path hosts take.
fn probed() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| match probe() {
        Ok(()) => {
            tracing::info!("hosts are created by clone3");
            true
        }
        Err(why) => {
            tracing::info!(reason = %why, "hosts are forked: clone3 is not usable here");
            false
        }
    })
}

/// Ask the kernel, without creating anything: `clone3` with a size below
/// the smallest `struct clone_args` is EINVAL where it exists; `waitid`
/// on a descriptor that cannot be open is EBADF where `P_PIDFD` exists.
fn probe() -> Result<(), Unusable> {
    if !cfg!(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )) {
        return Err(Unusable::Target);
    }
    // SAFETY: with size 0 the kernel refuses before reading `args` (NULL):
    // nothing is read, written or created.
    let clone3 = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<CloneArgs>(), 0usize) };
    let clone3 = if clone3 < 0 { errno() } else { 0 };
    // SAFETY: an all-zero siginfo_t is a valid value (plain integers).
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes at most into `info`, which we own; descriptor
    // i32::MAX is above any descriptor limit, so no process is waited for.
    let waitid = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            i32::MAX as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    let waitid = if waitid < 0 { errno() } else { 0 };
    decide(clone3, waitid)
}

/// The probe's verdict from the two errnos (0: the call succeeded, which
/// neither can where the kernel works as documented).
fn decide(clone3: i32, waitid: i32) -> Result<(), Unusable> {
    if clone3 != libc::EINVAL {
        return Err(Unusable::Clone3(clone3));
    }
    if waitid != libc::EBADF {
        return Err(Unusable::WaitPidfd(waitid));
    }
    Ok(())
}

/// What to do after a clone failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// `clone3` is missing or filtered: fork this host and every later one.
    Fork,
    /// The kernel has no `CLONE_INTO_CGROUP`: clone again without it (the
    /// child joins through `cgroup.procs`), and never use it again.
    WithoutIntoCgroup,
    /// A real error: the start fails.
    Fail,
}

/// What a clone's `errno` means, given whether it asked for
/// `CLONE_INTO_CGROUP` and what earlier clones proved to work.
fn after_failure(errno: Option<i32>, into: bool, clone3_works: bool, into_works: bool) -> Next {
    match errno {
        Some(libc::ENOSYS | libc::EPERM) if !clone3_works => Next::Fork,
        Some(libc::EINVAL | libc::E2BIG) if into && !into_works => Next::WithoutIntoCgroup,
        Some(libc::EINVAL | libc::E2BIG) if !into && !clone3_works => Next::Fork,
        _ => Next::Fail,
    }
}

/// Spawn `spec` by `clone3`, or `Ok(None)` where this path does not apply
/// (`clone3` is not usable here; a program without a `/` and no verified
/// descriptor, which `std` looks up in `PATH`): the caller forks instead.
/// `sandbox` is applied in the child; the parent's copy is untouched, so
/// the caller can still fork with it.
pub(super) fn spawn(
    spec: &LaunchSpec,
    sandbox: Option<&mut Prepared>,
) -> Result<Option<Spawned>, SpawnError> {
    if unavailable()
        || (spec.exec_fd.is_none() && !spec.node.as_os_str().as_bytes().contains(&b'/'))
    {
        return Ok(None);
    }
    let into = spec.cgroup_dir.as_ref().map(|d| d.as_raw_fd());
    spawn_learning(&LEARNT, spec, sandbox, into)
}

/// [`spawn`], asking the kernel to create the child in cgroup `into` (a
/// cgroup2 directory whose `cgroup.procs` is the first of
/// `spec.cgroup_procs`) unless `learnt` says it cannot, and learning from
/// the answer.
fn spawn_learning(
    learnt: &Learnt,
    spec: &LaunchSpec,
    mut sandbox: Option<&mut Prepared>,
    into: Option<RawFd>,
) -> Result<Option<Spawned>, SpawnError> {
    let exec_err = |e: io::Error| SpawnError::Exec {
        path: spec.node.clone(),
        source: Arc::new(e),
    };
    let image = Image::new(spec).map_err(exec_err)?;
    let mut into = into.filter(|_| learnt.into_cgroup.load(Ordering::Relaxed) != REFUSED);
    loop {
        let stdio = Stdio::new().map_err(exec_err)?;
        // The cgroup2 cgroup's `cgroup.procs` is the first of them: skip
        // it when the kernel places the child.
        let skip = usize::from(into.is_some());
        let procs: Vec<RawFd> = spec.cgroup_procs[skip.min(spec.cgroup_procs.len())..]
            .iter()
            .map(|f| f.as_raw_fd())
            .collect();
        let child = Child {
            image: &image,
            stdio: [
                stdio.stdin.as_raw_fd(),
                stdio.out_w.as_raw_fd(),
                stdio.err_w.as_raw_fd(),
            ],
            error: stdio.error_w.as_raw_fd(),
            run_as: spec.run_as,
            parent: nix::unistd::getpid().as_raw(),
            procs: &procs,
        };
        // SAFETY: `clone` runs the child's steps on data built above, which
        // stays alive until it returns (the child has exec'd or exited by
        // then: CLONE_VFORK).
        match unsafe { clone(&child, into, sandbox.as_deref_mut()) } {
            Ok((pid, pidfd)) => {
                learnt.clone3.store(WORKS, Ordering::Relaxed);
                if into.is_some() {
                    learnt.into_cgroup.store(WORKS, Ordering::Relaxed);
                }
                return finish(spec, pid, pidfd, stdio).map(Some);
            }
            Err(e) => match after_failure(
                e.raw_os_error(),
                into.is_some(),
                learnt.clone3.load(Ordering::Relaxed) == WORKS,
                learnt.into_cgroup.load(Ordering::Relaxed) == WORKS,
            ) {
                Next::Fork => {
                    if learnt.clone3.swap(REFUSED, Ordering::Relaxed) != REFUSED {
                        tracing::info!(error = %e, "clone3 refused; hosts are forked");
                    }
                    return Ok(None);
                }
                Next::WithoutIntoCgroup => {
                    if learnt.into_cgroup.swap(REFUSED, Ordering::Relaxed) != REFUSED {
                        tracing::info!(
                            error = %e,
                            "no CLONE_INTO_CGROUP on this kernel; hosts join their cgroup after clone3"
                        );
                    }
                    into = None;
                }
                Next::Fail => return Err(exec_err(e)),
            },
        }
    }
}

/// After the clone: read the error pipe (EOF: the exec happened), close the
/// child's ends, wrap the process.
fn finish(
    spec: &LaunchSpec,
    pid: libc::pid_t,
    pidfd: OwnedFd,
    stdio: Stdio,
) -> Result<Spawned, SpawnError> {
    let exec_err = |e: io::Error| SpawnError::Exec {
        path: spec.node.clone(),
        source: Arc::new(e),
    };
    let Stdio {
        stdin,
        out_r,
        out_w,
        err_r,
        err_w,
        error_r,
        error_w,
    } = stdio;
    drop((stdin, out_w, err_w, error_w));
    let failed = read_errno(&error_r);
    let child_failed = matches!(failed, Ok(Some(_)));
    let process = match failed {
        Ok(None) => HostProcess::from_pidfd(pid as u32, pidfd, out_r, err_r),
        Ok(Some(errno)) => Err(io::Error::from_raw_os_error(errno)),
        Err(e) => Err(e),
    };
    match process {
        Ok(child) => Ok(Spawned {
            child,
            pid: pid as u32,
            group: ProcessGroup::led_by(pid as u32),
        }),
        Err(e) => {
            if !child_failed {
                // It exec'd, but cannot be watched: never leave it running.
                // SAFETY: kill(2) with integers, on our own unreaped child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            // SAFETY: waitpid(2) on our own child, writing nothing back.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            Err(exec_err(e))
        }
    }
}

/// What the error pipe says: `None` at EOF (the exec closed it), else the
/// errno the child wrote.
fn read_errno(pipe: &OwnedFd) -> io::Result<Option<i32>> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(pipe, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match got {
        0 => Ok(None),
        4 => Ok(Some(i32::from_ne_bytes(buf))),
        _ => Err(io::Error::other("short read from the exec error pipe")),
    }
}

/// The program image, as C strings and NULL-terminated pointer arrays.
struct Image {
    path: CString,
    cwd: CString,
    exec_fd: Option<RawFd>,
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl Image {
    fn new(spec: &LaunchSpec) -> io::Result<Image> {
        let c = |s: &OsStr| {
            CString::new(s.as_bytes()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("nul byte found in {s:?}"),
                )
            })
        };
        let mut args = vec![c(spec.node.as_os_str())?];
        for a in &spec.node_args {
            args.push(c(OsStr::new(a))?);
        }
        args.push(c(spec.entry.as_os_str())?);
        for a in &spec.args {
            args.push(c(OsStr::new(a))?);
        }
        let mut env = Vec::with_capacity(spec.env.len());
        for (k, v) in &spec.env {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            env.push(c(OsStr::from_bytes(&kv))?);
        }
        let pointers = |v: &[CString]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        let argv = pointers(&args);
        let envp = pointers(&env);
        args.extend(env);
        Ok(Image {
            path: c(spec.node.as_os_str())?,
            cwd: c(spec.cwd.as_os_str())?,
            exec_fd: spec.exec_fd.as_ref().map(|f| f.as_raw_fd()),
            _strings: args,
            argv,
            envp,
        })
    }
}

/// The child's descriptors and the parent's ends, all close-on-exec and
/// above 2 (so no `dup2` onto 0–2 clobbers another source).
struct Stdio {
    stdin: OwnedFd,
    out_r: OwnedFd,
    out_w: OwnedFd,
    err_r: OwnedFd,
    err_w: OwnedFd,
    error_r: OwnedFd,
    error_w: OwnedFd,
}

impl Stdio {
    fn new() -> io::Result<Stdio> {
        let pipe = || -> io::Result<(OwnedFd, OwnedFd)> {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            Ok((above_stdio(r)?, above_stdio(w)?))
        };
        let stdin = above_stdio(std::fs::File::open("/dev/null")?.into())?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (error_r, error_w) = pipe()?;
        Ok(Stdio {
            stdin,
            out_r,
            out_w,
            err_r,
            err_w,
            error_r,
            error_w,
        })
    }
}

/// `fd`, moved to a number above 2 if it is 0–2 (a daemon started with a
/// standard descriptor closed).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let moved = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// What the child needs, built by the parent; plain integers and pointers
/// into memory the parent keeps alive.
struct Child<'a> {
    image: &'a Image,
    stdio: [RawFd; 3],
    error: RawFd,
    run_as: Option<HostUser>,
    parent: libc::pid_t,
    procs: &'a [RawFd],
}

/// `clone3` with every signal blocked around it (the child must not run a
/// daemon's handler before it resets them). In the child: the steps, then
/// exec; it never returns there.
///
/// # Safety
/// `child`'s pointers and descriptors must be valid; the caller's thread
/// must be the long-lived spawner thread (PDEATHSIG follows the thread).
unsafe fn clone(
    child: &Child<'_>,
    into: Option<RawFd>,
    sandbox: Option<&mut Prepared>,
) -> io::Result<(libc::pid_t, OwnedFd)> {
    let mut pidfd: libc::c_int = -1;
    let mut flags = (libc::CLONE_VFORK | libc::CLONE_PIDFD) as u64;
    if into.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    let args = CloneArgs {
        flags,
        pidfd: (&raw mut pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: into.unwrap_or(0) as u64,
        ..CloneArgs::default()
    };
    // SAFETY: sigset_t is plain integers; sigfillset and pthread_sigmask
    // write into the sets we own and change this thread's mask only.
    let old = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    };
    // SAFETY: clone3 reads `args` and writes the pidfd into `pidfd`, both on
    // this frame. Without CLONE_VM the child has its own copy of this
    // thread's memory: it returns here with 0, runs only async-signal-safe
    // raw syscalls on data built before the clone (no allocation, no lock:
    // the daemon's other threads do not exist in it) and leaves by exec or
    // `_exit`, never by returning.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r == 0 {
        // SAFETY: we are the child (see above).
        let errno = unsafe { child_steps(child, sandbox) };
        let bytes = errno.to_ne_bytes();
        // SAFETY: write(2) and _exit(2) on integers and a stack buffer.
        unsafe {
            libc::write(child.error, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127);
        }
    }
    let err = io::Error::last_os_error();
    // SAFETY: restores this thread's mask from the set saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if r < 0 {
        return Err(err);
    }
    // SAFETY: CLONE_PIDFD stored a new descriptor that only we own.
    Ok((r as libc::pid_t, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

/// Signals are 1 to 64 on Linux.
const NSIG: libc::c_int = 65;

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL)
}

/// The child's steps, in order (see the module's list); returns the errno of
/// the step that failed (exec returns only on failure).
///
/// # Safety
/// Only in the child of [`clone`]: raw syscalls on `child`'s data.
unsafe fn child_steps(child: &Child<'_>, sandbox: Option<&mut Prepared>) -> i32 {
    // SAFETY: each call is a raw syscall (or glibc's thin wrapper of one,
    // async-signal-safe) on integers and on C strings and arrays the parent
    // built; nothing allocates, locks or unwinds.
    unsafe {
        // 1. stdio.
        for (fd, target) in child.stdio.iter().zip(0..) {
            if libc::dup2(*fd, target) < 0 {
                return errno();
            }
        }
        // 2. working directory.
        if libc::chdir(child.image.cwd.as_ptr()) != 0 {
            return errno();
        }
        // 3. own process group.
        if libc::setpgid(0, 0) != 0 {
            return errno();
        }
        // 4. signals: the daemon's handlers and ignored SIGPIPE to default,
        // then nothing blocked.
        for sig in 1..NSIG {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue; // glibc's own signals
            }
            if old.sa_sigaction != libc::SIG_DFL
                && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        // Raw: glibc's wrappers keep its own signals (32, 33) as they were.
        let none: u64 = 0;
        if libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none as *const u64,
            std::ptr::null_mut::<u64>(),
            std::mem::size_of::<u64>(),
        ) != 0
        {
            return errno();
        }
        // 5. run_as (before PDEATHSIG, which a change of credentials clears).
        if let Some(HostUser { uid, gid }) = child.run_as
            && (libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0)
        {
            return errno();
        }
        // 6. die with the daemon (the spawner thread).
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return errno();
        }
        if libc::getppid() != child.parent {
            return libc::ESRCH;
        }
        // 7. the cgroups the kernel did not place it in.
        for &procs in child.procs {
            if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                return errno();
            }
        }
        // 8. the sandbox.
        if let Some(prepared) = sandbox
            && let Err(e) = prepared.apply()
        {
            return e.raw_os_error().unwrap_or(libc::EPERM);
        }
        // 9. exec.
        let image = child.image;
        match image.exec_fd {
            Some(fd) => {
                libc::syscall(
                    libc::SYS_execveat,
                    fd,
                    c"".as_ptr(),
                    image.argv.as_ptr(),
                    image.envp.as_ptr(),
                    libc::AT_EMPTY_PATH,
                );
            }
            None => {
                libc::execve(
                    image.path.as_ptr(),
                    image.argv.as_ptr(),
                    image.envp.as_ptr(),
                );
            }
        }
        errno()
    }
}

#[cfg(test)]
#[path = "clone3_tests.rs"]
mod tests;
