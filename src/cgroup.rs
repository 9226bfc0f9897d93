//! One cgroup v2 per host process, where a writable cgroup2 hierarchy exists
//! (`sandbox.cgroup = "auto"`). A cgroup holds every descendant, including
//! those that called `setsid()` and left the host's process group, and
//! `cgroup.kill` kills them all at once.
//!
//! The child joins in `pre_exec` by writing "0" to `cgroup.procs`, through a
//! descriptor the parent opened. Many desktops have no delegated cgroup: then
//! this is simply not used.
//!
//! `sandbox.memory_max_mb` is `memory.max` in that cgroup when the memory
//! controller is delegated to it. On hybrid layouts (cgroup2 without the
//! memory controller, which a v1 `memory` hierarchy holds) the limit goes to
//! a [`MemoryCgroupV1`] instead: `memory.limit_in_bytes` (and
//! `memory.memsw.limit_in_bytes`, so swap is no way around it) in a per-host
//! cgroup of the v1 hierarchy, which the child joins as well.

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
    // Offer the memory controller to host cgroups where our parent has it
    // (for `sandbox.memory_max_mb`); harmless where it does not.
    if std::fs::read_to_string(root.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
    {
        let _ = write_file(&root.join("cgroup.subtree_control"), "+memory");
    }
    remove_dead_daemons_cgroups(&root);
    Some(root)
}

/// Whether host cgroups under `root` get the memory controller (so
/// `memory.max` can be written).
pub fn delegates_memory(root: &Path) -> bool {
    std::fs::read_to_string(root.join("cgroup.subtree_control"))
        .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
}

/// Where per-host v1 memory cgroups live, on a hybrid layout:
/// `<memory mount><our memory cgroup>/dscode-hostd`, if writable.
pub fn detect_memory_v1() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = find_mount(&mountinfo, |fstype, options| {
        fstype == "cgroup" && options.split(',').any(|o| o == "memory")
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let root = make_root(&mount, own_cgroup(&own, Some("memory"))?)?;
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
    /// Remove it (only succeeds once it is empty).
    fn remove(&self) {
        let _ = std::fs::remove_dir(self.dir());
    }
}

/// The v1 memory cgroup of one host process: the limit only. Killing and
/// tracking stay with the process group and the cgroup2 [`HostCgroup`].
#[derive(Debug, Clone)]
pub struct MemoryCgroupV1 {
    pub dir: PathBuf,
}

impl MemoryCgroupV1 {
    /// Create the host's cgroup under `root`, cap it at `bytes` (memory and
    /// memory+swap, where swap is accounted) and open its `cgroup.procs`.
    pub fn create(
        root: &Path,
        extension_id: &str,
        bytes: u64,
    ) -> std::io::Result<(MemoryCgroupV1, File)> {
        let dir = host_dir(root, extension_id)?;
        let cg = MemoryCgroupV1 { dir };
        let set = || -> std::io::Result<File> {
            write_file(&cg.dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
            let memsw = cg.dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write_file(&memsw, &bytes.to_string())?;
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

impl Cgroup for MemoryCgroupV1 {
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

    /// Cap the cgroup's memory (`memory.max`, bytes). `Err` when the memory
    /// controller is not delegated to this subtree.
    pub fn limit_memory(&self, bytes: u64) -> std::io::Result<()> {
        write_file(&self.dir.join("memory.max"), &bytes.to_string())
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
