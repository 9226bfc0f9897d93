//! One cgroup v2 per host process, where a writable cgroup2 hierarchy exists
//! (`sandbox.cgroup = "auto"`). A cgroup holds every descendant, including
//! those that called `setsid()` and left the host's process group, and
//! `cgroup.kill` kills them all at once.
//!
//! The child joins in `pre_exec` by writing "0" to `cgroup.procs`, through a
//! descriptor the parent opened. Many desktops have no delegated cgroup: then
//! this is simply not used.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where host cgroups live: `<cgroup2 mount><our cgroup>/dscode-hostd`, each
/// named `<daemon pid>.<extension id>.<generation>`. Empty ones left by a
/// daemon that is gone are removed here (`rmdir` only succeeds on empty
/// cgroups).
pub fn detect() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right
            .starts_with("cgroup2 ")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let root = mount.join(own.trim_start_matches('/')).join("dscode-hostd");
    std::fs::create_dir_all(&root).ok()?;
    // Writable for real: a probe child can be made and removed.
    let probe = root.join(format!("probe.{}", std::process::id()));
    std::fs::create_dir(&probe).ok()?;
    std::fs::remove_dir(&probe).ok()?;
    // Empty cgroups of daemons that are gone (never a live daemon's: it may
    // have just made one its next host has not joined yet).
    // Offer the memory controller to host cgroups where our parent has it
    // (for `sandbox.memory_max_mb`); harmless where it does not.
    if std::fs::read_to_string(root.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
    {
        let _ = OpenOptions::new()
            .write(true)
            .open(root.join("cgroup.subtree_control"))
            .and_then(|mut f| f.write_all(b"+memory"));
    }
    if let Ok(entries) = std::fs::read_dir(&root) {
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
    Some(root)
}

/// The cgroup of one host process.
#[derive(Debug, Clone)]
pub struct HostCgroup {
    pub dir: PathBuf,
}

impl HostCgroup {
    /// Create `<root>/<daemon pid>.<id>.<n>` (n unique in this daemon: a
    /// removed and re-added host must never reuse a name whose removal may
    /// still be pending) and open its `cgroup.procs` for the child to join.
    pub fn create(root: &Path, extension_id: &str) -> std::io::Result<(HostCgroup, File)> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = root.join(format!("{}.{extension_id}.{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let procs = OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))?;
        Ok((HostCgroup { dir }, procs))
    }

    /// Cap the cgroup's memory (`memory.max`, bytes). `Err` when the memory
    /// controller is not delegated to this subtree.
    pub fn limit_memory(&self, bytes: u64) -> std::io::Result<()> {
        OpenOptions::new()
            .write(true)
            .open(self.dir.join("memory.max"))
            .and_then(|mut f| f.write_all(bytes.to_string().as_bytes()))
    }

    /// SIGKILL every process in the cgroup.
    pub fn kill(&self) {
        if let Err(e) = OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.kill"))
            .and_then(|mut f| f.write_all(b"1"))
        {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(cgroup = %self.dir.display(), error = %e, "cgroup.kill failed");
            }
        }
    }

    /// Whether any process is left in the cgroup.
    pub fn populated(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .map(|e| e.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    }

    /// Remove the (empty) cgroup.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir(&self.dir);
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
