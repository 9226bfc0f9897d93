//! The Linux default sandbox profile for hosts, in the order the child
//! applies it (see `SECURITY.md`):
//!
//! 1. process group (`spawn`);
//! 2. PDEATHSIG + getppid check (`spawn`);
//! 3. cgroup join (`spawn`; by the kernel on the `clone3` path);
//! 4. `RLIMIT_CORE=0`;
//! 5. inherited fds: every fd the daemon opens is close-on-exec; the rest
//!    are marked so, then `RLIMIT_NOFILE` is lowered (`max_open_files`);
//! 5. (b) capabilities: ambient cleared, bounding set emptied, root made
//!    ordinary (securebits, where the daemon may), then no effective,
//!    permitted or inheritable capability (every profile);
//! 6. `NO_NEW_PRIVS`;
//! 7. Landlock;
//! 8. seccomp, last.
//!
//! Everything is built in the parent ([`prepare`]): the Landlock ruleset fd
//! and the seccomp BPF program. The child ([`Prepared::apply`], from the
//! `clone3` child or `pre_exec`) only makes raw syscalls.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, Scope, path_beneath_rules,
};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

/// Why a sandbox could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SandboxError {
    #[error("landlock: {0}")]
    Landlock(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
}

/// What the default profile allows a host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxPolicy {
    /// `sandbox.profile = "off"`: nothing below is applied.
    pub off: bool,
    /// `sandbox.profile = "strict"`: run the host under `bwrap` with its own
    /// PID namespace (and network namespace when network is denied), the
    /// seccomp program passed to bwrap; Landlock is not used (it would deny
    /// bwrap's mounts).
    pub strict: bool,
    /// Directories (and files) the host may write: its private dir, its
    /// TMPDIR, its IPC directory, `sandbox.writable_paths`.
    pub writable: Vec<PathBuf>,
    /// Directories the strict profile covers with an empty tmpfs before the
    /// writable binds (the IPC root: a host sees only its own IPC
    /// directory). The default profile cannot hide them: reads are allowed
    /// everywhere.
    pub hidden: Vec<PathBuf>,
    /// `sandbox.network = "deny"`: no TCP bind or connect (UDP is not covered).
    pub deny_network: bool,
    /// `sandbox.require`: a kernel without Landlock is a start error.
    pub require: bool,
    /// `sandbox.max_open_files`: the host's RLIMIT_NOFILE (at least 18:
    /// Node needs that many to start).
    pub max_open_files: Option<u64>,
}

/// Built in the parent, applied in the child.
pub struct Prepared {
    nofile: Option<u64>,
    /// Strict profile: the BPF program in a memfd that bwrap inherits.
    pub bwrap_seccomp: Option<std::os::fd::OwnedFd>,
    ruleset: Option<RulesetCreated>,
    bpf: Option<BpfProgram>,
    /// Descriptors (besides 0–2) that must survive exec, sorted.
    keep: Vec<RawFd>,
}

/// The syscalls the default profile refuses with EPERM.
// The same names exist on both architectures seccompiler targets.
const DENIED: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_open_by_handle_at,
];

fn target_arch() -> Result<TargetArch, SandboxError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| SandboxError::Seccomp(format!("{e:?}")))
}

/// The seccomp deny-list as a BPF program, compiled once.
pub fn seccomp_program() -> Result<BpfProgram, SandboxError> {
    static PROGRAM: std::sync::OnceLock<Result<BpfProgram, SandboxError>> =
        std::sync::OnceLock::new();
    PROGRAM.get_or_init(compile_seccomp).clone()
}

fn compile_seccomp() -> Result<BpfProgram, SandboxError> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target_arch()?,
    )
    .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))
}

/// The BPF program as bytes in a sealed-off memfd, for `bwrap --seccomp FD`.
fn seccomp_memfd(bpf: &BpfProgram) -> Result<std::os::fd::OwnedFd, SandboxError> {
    use std::io::{Seek, Write};
    let err = |e: &dyn std::fmt::Display| SandboxError::Seccomp(format!("memfd: {e}"));
    let fd =
        nix::sys::memfd::memfd_create(c"hostd-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| err(&e))?;
    let mut bytes = Vec::with_capacity(bpf.len() * 8);
    for f in bpf {
        bytes.extend_from_slice(&f.code.to_ne_bytes());
        bytes.push(f.jt);
        bytes.push(f.jf);
        bytes.extend_from_slice(&f.k.to_ne_bytes());
    }
    let mut file = std::fs::File::from(fd);
    file.write_all(&bytes).map_err(|e| err(&e))?;
    file.rewind().map_err(|e| err(&e))?;
    Ok(file.into())
}

/// `bwrap` for the strict profile; a clear error when it is not installed.
pub fn bwrap_path() -> Result<PathBuf, SandboxError> {
    which::which("bwrap").map_err(|_| {
        SandboxError::Landlock(
            "sandbox.profile = \"strict\" needs bwrap (Debian package bubblewrap), which is not installed"
                .into(),
        )
    })
}

/// What the strict profile runs between bwrap and Node when the daemon is
/// root: bwrap clears the host's effective, permitted and ambient sets but
/// leaves the bounding set full, so `setpriv` (util-linux, with only
/// `CAP_SETPCAP` kept for it) empties the bounding set, makes root ordinary
/// for good, and execs Node with nothing.
pub fn strict_cap_dropper() -> Result<Vec<std::ffi::OsString>, SandboxError> {
    let setpriv = which::which("setpriv").map_err(|_| {
        SandboxError::Landlock(
            "sandbox.profile = \"strict\" under root needs setpriv (Debian package util-linux) to empty the host's capability bounding set; it is not installed"
                .into(),
        )
    })?;
    Ok([
        setpriv.into_os_string(),
        "--bounding-set=-all".into(),
        "--inh-caps=-all".into(),
        "--ambient-caps=-all".into(),
        "--securebits=+noroot,+noroot_locked,+no_setuid_fixup,+no_setuid_fixup_locked,+keep_caps_locked".into(),
        "--".into(),
    ]
    .into())
}

/// The Landlock ABI this profile asks for (best effort below it): signal and
/// abstract-socket scoping arrived in ABI 6.
const LANDLOCK_ABI: ABI = ABI::V6;

fn landlock_ruleset(policy: &SandboxPolicy) -> Result<RulesetCreated, landlock::RulesetError> {
    let level = if policy.require {
        CompatLevel::HardRequirement
    } else {
        CompatLevel::BestEffort
    };
    let mut rs = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))?
        .scope(Scope::Signal | Scope::AbstractUnixSocket)?;
    if policy.deny_network {
        rs = rs.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?;
    }
    let mut writable: Vec<PathBuf> = policy
        .writable
        .iter()
        .filter(|p| p.exists())
        .cloned()
        .collect();
    for dev in ["/dev/null", "/dev/tty"] {
        writable.push(dev.into());
    }
    rs.create()?
        // Read and execute everywhere.
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(LANDLOCK_ABI)))?
        .add_rules(path_beneath_rules(
            writable,
            AccessFs::from_all(LANDLOCK_ABI),
        ))
}

/// Build the profile for one spawn.
pub fn prepare(policy: &SandboxPolicy) -> Result<Prepared, SandboxError> {
    let mut prepared = Prepared {
        nofile: policy.max_open_files,
        bwrap_seccomp: None,
        ruleset: None,
        bpf: None,
        keep: Vec::new(),
    };
    if policy.off {
        return Ok(prepared);
    }
    if policy.strict {
        let memfd = seccomp_memfd(&seccomp_program()?)?;
        prepared.keep_open(memfd.as_raw_fd());
        prepared.bwrap_seccomp = Some(memfd);
        return Ok(prepared);
    }
    prepared.ruleset =
        Some(landlock_ruleset(policy).map_err(|e| SandboxError::Landlock(e.to_string()))?);
    prepared.bpf = Some(seccomp_program()?);
    Ok(prepared)
}

impl Prepared {
    /// Let descriptor `fd` survive exec (the strict profile hands bwrap the
    /// verified Node descriptor and the seccomp memfd).
    pub fn keep_open(&mut self, fd: RawFd) {
        if let Err(at) = self.keep.binary_search(&fd) {
            self.keep.insert(at, fd);
        }
    }
}

/// Step 5: every descriptor from 3 up, except `keep` (sorted), becomes
/// close-on-exec, so exec closes whatever the daemon itself inherited
/// without `CLOEXEC` (a leaky parent, a debugger). Marking rather than
/// closing keeps the Landlock ruleset, the verified Node descriptor and std's
/// exec-error pipe usable until exec. Raw syscalls only.
fn cloexec_all_but(keep: &[RawFd]) -> std::io::Result<()> {
    for_each_gap(keep, cloexec_range)
}

/// Call `f(lo, hi)` for each range of descriptors from 3 to `u32::MAX` that
/// holds none of `keep` (sorted). No allocation.
fn for_each_gap(
    keep: &[RawFd],
    mut f: impl FnMut(u32, u32) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut lo: u32 = 3;
    for &fd in keep {
        let Ok(fd) = u32::try_from(fd) else { continue };
        if fd < lo {
            continue;
        }
        if fd > lo {
            f(lo, fd - 1)?;
        }
        if fd == u32::MAX {
            return Ok(());
        }
        lo = fd + 1;
    }
    f(lo, u32::MAX)
}

fn cloexec_range(lo: u32, hi: u32) -> std::io::Result<()> {
    // SAFETY: close_range(2) takes three integers and, with
    // CLOSE_RANGE_CLOEXEC, only sets descriptor flags; no memory is shared.
    let r = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, libc::CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
        return Err(err);
    }
    // Before Linux 5.11: one fcntl per possible descriptor.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let top = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(1 << 20) as u32
    } else {
        1024
    };
    for fd in lo..=hi.min(top.saturating_sub(1)) {
        let fd = fd as RawFd;
        // SAFETY: fcntl on an integer; a closed descriptor answers EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// Step 5b, in the child: leave the process no capability, whatever the
/// daemon had (as root: all of them), and none to regain at exec. Raw
/// syscalls only.
///
/// A daemon without `CAP_SETPCAP` (an ordinary user's) cannot shrink the
/// bounding set or set securebits; it has no capability to lose either, and
/// `NO_NEW_PRIVS` (step 6) keeps exec from granting any. Nor can a child
/// that already became `run_as`'s user (step 1b comes first): its bounding
/// set stays as the daemon's was, with nothing held and nothing to regain.
pub fn drop_capabilities() -> std::io::Result<()> {
    // SAFETY: prctl(2) and capset(2) with plain integer arguments and a
    // header/data pair on this stack frame; no allocation, no locks.
    unsafe {
        // Ambient: cleared (EINVAL before Linux 4.3, where there is none).
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        // Bounding: every capability the kernel knows (EINVAL past the last).
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                match *libc::__errno_location() {
                    libc::EINVAL => break,
                    libc::EPERM => break, // no CAP_SETPCAP: nothing to drop
                    e => return Err(std::io::Error::from_raw_os_error(e)),
                }
            }
        }
        // Root is not special at exec, and that cannot be undone.
        const SECBITS: libc::c_ulong = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80;
        libc::prctl(libc::PR_SET_SECUREBITS, SECBITS, 0, 0, 0);
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let mut header = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn errno(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

impl Prepared {
    /// Steps 4–8, in the child between fork and exec: raw syscalls only, no
    /// allocation on the success path.
    pub fn apply(&mut self) -> std::io::Result<()> {
        use nix::sys::resource::{Resource, setrlimit};
        setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(errno)?;
        // The sweep before the lower RLIMIT_NOFILE: its fallback (before
        // Linux 5.11) stops at the limit, and would miss what lies above.
        cloexec_all_but(&self.keep)?;
        if let Some(n) = self.nofile {
            setrlimit(Resource::RLIMIT_NOFILE, n, n).map_err(errno)?;
        }
        if self.bwrap_seccomp.is_none() {
            // bwrap needs its own capabilities to build the sandbox, and
            // drops them for the host (`--cap-drop ALL`).
            drop_capabilities()?;
        }
        if let Some(fd) = &self.bwrap_seccomp {
            // bwrap reads the program from this fd: let it survive exec.
            use std::os::fd::AsFd;
            nix::fcntl::fcntl(
                fd.as_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .map_err(errno)?;
            nix::sys::prctl::set_no_new_privs().map_err(errno)?;
            return Ok(());
        }
        if self.ruleset.is_none() && self.bpf.is_none() {
            return Ok(());
        }
        nix::sys::prctl::set_no_new_privs().map_err(errno)?;
        if let Some(rs) = self.ruleset.take() {
            rs.restrict_self()
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))?;
        }
        if let Some(bpf) = &self.bpf {
            seccompiler::apply_filter(bpf)
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))?;
        }
        Ok(())
    }
}

/// What the kernel supports (`daemon.info` reports it, in
/// `crate::protocol::SandboxInfo`).
#[derive(Debug, Clone)]
pub struct Support {
    pub landlock: String,
    pub seccomp: String,
}

/// Probe once, at start-up.
pub fn support() -> Support {
    let landlock = match landlock_ruleset(&SandboxPolicy::default()) {
        Ok(_) => {
            let v = unsafe_abi_version();
            if v > 0 {
                format!("v{v}")
            } else {
                "unsupported".into()
            }
        }
        Err(_) => "unsupported".into(),
    };
    let seccomp = match std::fs::read_to_string("/proc/self/status") {
        Ok(s) if s.lines().any(|l| l.starts_with("Seccomp:")) => "supported".into(),
        _ => "unsupported".into(),
    };
    Support { landlock, seccomp }
}

/// The kernel's Landlock ABI version (0 when unsupported).
fn unsafe_abi_version() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns the ABI
    // version (or an error); it touches no memory and creates no fd.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    }
}

#[cfg(test)]
#[path = "sandbox_tests.rs"]
mod tests;
