//! One cgroup v2 per host process, where a writable cgroup2 hierarchy exists
//! (`sandbox.cgroup = "auto"`). A cgroup holds every descendant, including
//! those that called `setsid()` and left the host's process group, and
//! `cgroup.kill` kills them all at once.
//!
//! The child is created in it by `clone3(CLONE_INTO_CGROUP)` through the
//! directory's `O_PATH` descriptor, or (fork path, older kernels) joins by
//! writing "0" to `cgroup.procs`, through a descriptor the parent opened. Many desktops have no delegated cgroup: then
//! this is simply not used.
//!
//! Limits ([`Limit`]: memory, CPU) are written in that cgroup when its
//! controller is delegated to it (`memory.max`, `cpu.max`). On hybrid
//! layouts (cgroup2 without the controller, which a v1 hierarchy holds) a
//! limit goes to a [`CgroupV1`] instead, a per-host cgroup in that v1
//! hierarchy which the child joins as well: `memory.limit_in_bytes` (and
//! `memory.memsw.limit_in_bytes`, so swap is no way around it), or
//! `cpu.cfs_quota_us` over a 100 ms `cpu.cfs_period_us`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where host cgroups live: `<cgroup2 mount><our cgroup>/dscode-hostd`, each
/// named `<daemon pid>.<extension id>.<generation>`. Empty ones left by a
/// daemon that is gone are removed here (`rmdir` only succeeds on empty
/// cgroups).
pub fn detect() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = find_mount(&mountinfo, |fstype, _| fstype == "cgroup2")?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let root = make_root(&mount, own_cgroup(&own, None)?)?;
    // Offer the limit controllers to host cgroups where our parent has them;
    // harmless where it does not.
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    for c in ["memory", "cpu"] {
        if available.split_whitespace().any(|x| x == c) {
            let _ = write_file(&root.join("cgroup.subtree_control"), &format!("+{c}"));
        }
    }
    remove_dead_daemons_cgroups(&root);
    Some(root)
}

/// A per-host resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Bytes of memory.
    Memory(u64),
    /// Percent of one CPU (200 = two CPUs' worth).
    Cpu(u32),
}

/// The CFS period limits are expressed in: 100 ms.
const CPU_PERIOD_US: u64 = 100_000;

impl Limit {
    /// The controller that enforces it.
    pub fn controller(self) -> &'static str {
        match self {
            Limit::Memory(_) => "memory",
            Limit::Cpu(_) => "cpu",
        }
    }

    fn cpu_quota_us(percent: u32) -> u64 {
        u64::from(percent) * CPU_PERIOD_US / 100
    }

    /// The cgroup2 file and value.
    fn v2(self) -> (&'static str, String) {
        match self {
            Limit::Memory(b) => ("memory.max", b.to_string()),
            Limit::Cpu(p) => (
                "cpu.max",
                format!("{} {CPU_PERIOD_US}", Self::cpu_quota_us(p)),
            ),
        }
    }

    /// The v1 files and values, in order; `true` marks one that may be
    /// absent (swap accounting off).
    fn v1(self) -> Vec<(&'static str, String, bool)> {
        match self {
            Limit::Memory(b) => vec![
                ("memory.limit_in_bytes", b.to_string(), false),
                ("memory.memsw.limit_in_bytes", b.to_string(), true),
            ],
            Limit::Cpu(p) => vec![
                ("cpu.cfs_period_us", CPU_PERIOD_US.to_string(), false),
                ("cpu.cfs_quota_us", Self::cpu_quota_us(p).to_string(), false),
            ],
        }
    }
}

/// Whether host cgroups under `root` get `controller` (so its limits can be
/// written there).
pub fn delegates(root: &Path, controller: &str) -> bool {
    std::fs::read_to_string(root.join("cgroup.subtree_control"))
        .is_ok_and(|c| c.split_whitespace().any(|x| x == controller))
}

/// Where per-host v1 cgroups of `controller` live, on a hybrid layout:
/// `<its mount><our cgroup there>/dscode-hostd`, if writable.
pub fn detect_v1(controller: &str) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = find_mount(&mountinfo, |fstype, options| {
        fstype == "cgroup" && options.split(',').any(|o| o == controller)
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let root = make_root(&mount, own_cgroup(&own, Some(controller))?)?;
    remove_dead_daemons_cgroups(&root);
    Some(root)
}

/// The mount point of the first `/proc/self/mountinfo` entry whose file
/// system type and super options satisfy `want`.
fn find_mount(mountinfo: &str, want: impl Fn(&str, &str) -> bool) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut fields = right.split_whitespace();
        let (fstype, _source, options) = (fields.next()?, fields.next()?, fields.next()?);
        want(fstype, options).then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// Our cgroup from `/proc/self/cgroup`: the cgroup2 one (`0::/path`), or the
/// v1 hierarchy holding `controller`.
fn own_cgroup<'a>(proc_cgroup: &'a str, controller: Option<&str>) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = match controller {
            None => id == "0" && controllers.is_empty(),
            Some(c) => controllers.split(',').any(|x| x == c),
        };
        hit.then_some(path)
    })
}

/// `<mount><own>/dscode-hostd`, created, and writable for real: a probe
/// child can be made and removed.
fn make_root(mount: &Path, own: &str) -> Option<PathBuf> {
    let root = mount.join(own.trim_start_matches('/')).join("dscode-hostd");
    std::fs::create_dir_all(&root).ok()?;
    let probe = root.join(format!("probe.{}", std::process::id()));
    std::fs::create_dir(&probe).ok()?;
    std::fs::remove_dir(&probe).ok()?;
    Some(root)
}

/// Remove the empty host cgroups of daemons that are gone (never a live
/// daemon's: it may have just made one its next host has not joined yet).
/// `rmdir` only succeeds on empty cgroups.
fn remove_dead_daemons_cgroups(root: &Path) {
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let name = e.file_name();
            let owner = name
                .to_str()
                .and_then(|n| n.split('.').next()?.parse::<u32>().ok());
            if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}

/// `<daemon pid>.<extension id>.<n>`, n unique in this daemon: a removed and
/// re-added host must never reuse a name whose removal may still be pending.
fn host_dir(root: &Path, extension_id: &str) -> std::io::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = root.join(format!("{}.{extension_id}.{n}", std::process::id()));
    match std::fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir),
        Err(e) => Err(e),
    }
}

fn open_procs(dir: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
}

fn write_file(path: &Path, value: &str) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
}

/// What the supervisor needs of any per-host cgroup.
pub trait Cgroup {
    fn dir(&self) -> &Path;
    /// Whether any process is left in it.
    fn populated(&self) -> bool;
    /// Remove it (only succeeds once it is empty); `true` once it is gone.
    fn remove(&self) -> bool {
        match std::fs::remove_dir(self.dir()) {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }
}

/// A host process's cgroup in one v1 hierarchy, for one limit. Killing and
/// tracking stay with the process group and the cgroup2 [`HostCgroup`].
#[derive(Debug, Clone)]
pub struct CgroupV1 {
    pub dir: PathBuf,
}

impl CgroupV1 {
    /// Create the host's cgroup under `root` (the hierarchy of
    /// `limit.controller()`), write `limit` and open its `cgroup.procs`.
    pub fn create(
        root: &Path,
        extension_id: &str,
        limit: Limit,
    ) -> std::io::Result<(CgroupV1, File)> {
        let cg = CgroupV1 {
            dir: host_dir(root, extension_id)?,
        };
        let set = || -> std::io::Result<File> {
            for (file, value, optional) in limit.v1() {
                let path = cg.dir.join(file);
                if optional && !path.exists() {
                    continue;
                }
                write_file(&path, &value)?;
            }
            open_procs(&cg.dir)
        };
        match set() {
            Ok(procs) => Ok((cg, procs)),
            Err(e) => {
                cg.remove();
                Err(e)
            }
        }
    }
}

impl Cgroup for CgroupV1 {
    fn dir(&self) -> &Path {
        &self.dir
    }

    fn populated(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty())
    }
}

/// The cgroup of one host process.
#[derive(Debug, Clone)]
pub struct HostCgroup {
    pub dir: PathBuf,
}

impl HostCgroup {
    /// Create `<root>/<daemon pid>.<id>.<n>` (see [`host_dir`]) and open its
    /// `cgroup.procs` for the child to join.
    pub fn create(root: &Path, extension_id: &str) -> std::io::Result<(HostCgroup, File)> {
        let dir = host_dir(root, extension_id)?;
        let procs = open_procs(&dir)?;
        Ok((HostCgroup { dir }, procs))
    }

    /// Its directory, opened `O_PATH`: `clone3(CLONE_INTO_CGROUP)` creates
    /// the child in it.
    pub fn open_dir(&self) -> std::io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&self.dir)
    }

    /// Write `limit` (`memory.max`, `cpu.max`). `Err` when its controller
    /// is not delegated to this subtree.
    pub fn limit(&self, limit: Limit) -> std::io::Result<()> {
        let (file, value) = limit.v2();
        write_file(&self.dir.join(file), &value)
    }

    /// The processes in the cgroup now (exited ones are not listed).
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|p| p.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILL every process in the cgroup.
    pub fn kill(&self) {
        if let Err(e) = write_file(&self.dir.join("cgroup.kill"), "1") {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(cgroup = %self.dir.display(), error = %e, "cgroup.kill failed");
            }
        }
    }
}

impl HostCgroup {
    /// Resolves once no live process is left in the cgroup: woken by
    /// inotify on `cgroup.events` (the kernel rewrites it when `populated`
    /// changes), not by polling. `Err` when inotify is unavailable; the
    /// caller then polls.
    pub async fn emptied(self) -> std::io::Result<()> {
        let watch = crate::inotify::Watch::new(
            &self.dir.join("cgroup.events"),
            nix::sys::inotify::AddWatchFlags::IN_MODIFY,
        )?;
        loop {
            // Checked after the watch exists, so no change is missed.
            if !self.populated() {
                return Ok(());
            }
            watch.changed().await?;
        }
    }
}

impl Cgroup for HostCgroup {
    fn dir(&self) -> &Path {
        &self.dir
    }

    fn populated(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .map(|e| e.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    }
}

/// At shutdown, once every host is gone: remove this daemon's empty host
/// cgroups (the shared root stays; other daemons may use it).
pub fn remove_ours(root: &Path) {
    let prefix = format!("{}.", std::process::id());
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // From this project's CI VM: a hybrid layout.
    const MOUNTINFO: &str = "\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const PROC_CGROUP: &str = "\
9:name=systemd:/
4:memory:/process_api/6ddd
2:cpu,cpuacct:/
0::/user.slice/a.scope
";

    #[tokio::test]
    async fn emptying_a_cgroup_is_an_event() {
        let root = detect().expect(
            "this test needs a writable cgroup2 subtree (CI runs as root with cgroup2 mounted)",
        );
        let (cg, mut procs) = HostCgroup::create(&root, "unit.emptied").unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        procs.write_all(child.id().to_string().as_bytes()).unwrap();
        assert!(cg.populated());
        let waiter = tokio::spawn(cg.clone().emptied());
        // Still populated: the waiter must not have finished.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        child.kill().unwrap();
        child.wait().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("no wake-up within 5 s of the cgroup emptying")
            .unwrap()
            .unwrap();
        assert!(!cg.populated());
        cg.remove();
    }

    #[test]
    fn limits_in_cgroup2_and_v1_terms() {
        assert_eq!(
            Limit::Memory(1 << 20).v2(),
            ("memory.max", "1048576".into())
        );
        assert_eq!(Limit::Cpu(20).v2(), ("cpu.max", "20000 100000".into()));
        assert_eq!(Limit::Cpu(250).v2(), ("cpu.max", "250000 100000".into()));
        assert_eq!(
            Limit::Cpu(50).v1(),
            vec![
                ("cpu.cfs_period_us", "100000".into(), false),
                ("cpu.cfs_quota_us", "50000".into(), false),
            ]
        );
        assert_eq!(
            Limit::Memory(7).v1()[1],
            ("memory.memsw.limit_in_bytes", "7".into(), true)
        );
    }

    #[test]
    fn mounts_and_own_cgroups_are_found_in_a_hybrid_layout() {
        assert_eq!(
            find_mount(MOUNTINFO, |t, _| t == "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            find_mount(MOUNTINFO, |t, o| t == "cgroup"
                && o.split(',').any(|x| x == "memory")),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(find_mount(MOUNTINFO, |t, _| t == "tmpfs"), None);
        assert_eq!(own_cgroup(PROC_CGROUP, None), Some("/user.slice/a.scope"));
        assert_eq!(
            own_cgroup(PROC_CGROUP, Some("memory")),
            Some("/process_api/6ddd")
        );
        assert_eq!(own_cgroup(PROC_CGROUP, Some("cpuacct")), Some("/"));
        assert_eq!(own_cgroup(PROC_CGROUP, Some("pids")), None);
    }
}
