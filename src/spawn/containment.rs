//! What holds one host process and everything it starts: its process group
//! (a kill-on-close Job Object on Windows) and, on Linux, the cgroups it
//! joined (its cgroup2 cgroup, which also holds descendants that left the
//! group, and the v1 cgroups that enforce its limits on hybrid layouts).
//!
//! [`Cgroups`] are made before the spawn (the child joins them in
//! `pre_exec`); the spawn's process group completes them into a
//! [`Containment`], which the host's actor owns until the process and its
//! leftovers are gone. Every platform difference of that lifetime (create
//! and join, kill the tree, alive/populated, wait until empty, release) is
//! here, so the supervisor above has no `cfg(target_os)`.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;

use super::cleanup::{Cleanup, Remains};
use super::{LaunchSpec, ProcessGroup, StopSignal, UsageProbe};

/// Where per-host cgroups are made (Linux; found at start-up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupRoots {
    /// A writable cgroup2 subtree: one cgroup per host process.
    pub v2: Option<PathBuf>,
    /// A writable v1 `memory` hierarchy, used for memory limits when the
    /// cgroup2 subtree has no memory controller (hybrid layouts).
    pub memory_v1: Option<PathBuf>,
    /// Likewise a v1 `cpu` hierarchy, for CPU limits.
    pub cpu_v1: Option<PathBuf>,
}

impl CgroupRoots {
    /// The v1 hierarchy that enforces `controller`'s limits, if one does.
    pub fn v1(&self, controller: &str) -> Option<&PathBuf> {
        match controller {
            "memory" => self.memory_v1.as_ref(),
            "cpu" => self.cpu_v1.as_ref(),
            _ => None,
        }
    }
}

/// The limits one host process gets, each `None` when it has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory.
    pub memory_max: Option<u64>,
    /// Percent of one CPU.
    pub cpu_max_percent: Option<u32>,
}

/// Resolves once a host's cgroup2 cgroup is empty (inotify on
/// `cgroup.events`); `Err` when no event can be had (then poll).
pub type Emptied = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// The cgroups made for one host process before its spawn; none off Linux
/// or where no cgroup hierarchy is writable.
#[derive(Debug, Default)]
pub struct Cgroups {
    /// Its cgroup2 cgroup: kill, tracking, and the limits where the
    /// controllers are delegated.
    #[cfg(target_os = "linux")]
    v2: Option<crate::cgroup::HostCgroup>,
    /// Its cgroups in v1 hierarchies, one per limit that needs one.
    #[cfg(target_os = "linux")]
    v1: Vec<crate::cgroup::CgroupV1>,
}

impl Cgroups {
    /// The host's cgroup2 cgroup under `roots.v2` and, for each limit a v1
    /// hierarchy must enforce, its cgroup there; `launch` gets each one's
    /// `cgroup.procs` for the child to join. Failures degrade to the
    /// process group alone, with a warning.
    pub fn make(id: &str, roots: &CgroupRoots, limits: Limits, launch: &mut LaunchSpec) -> Self {
        #[cfg(target_os = "linux")]
        {
            make_linux(id, roots, limits, launch)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (id, roots, limits, launch);
            Cgroups::default()
        }
    }

    /// Complete them with the spawned process's group.
    pub fn contain(self, group: ProcessGroup) -> Containment {
        Containment {
            group,
            cgroups: self,
        }
    }

    /// Hand them to `cleanup`, which removes them once empty, off the
    /// caller's path (the spawn they were made for failed, or their
    /// process is gone). Nothing is queued when there is nothing to remove.
    pub fn release(self, cleanup: &Cleanup) {
        if !self.is_empty() {
            cleanup.release(self);
        }
    }

    /// No cgroup was made.
    fn is_empty(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            self.v2.is_none() && self.v1.is_empty()
        }
        #[cfg(not(target_os = "linux"))]
        {
            true
        }
    }
}

impl Remains for Cgroups {
    /// `rmdir` each cgroup that no process is left in; `true` once all are
    /// gone.
    fn try_remove(&mut self) -> bool {
        #[cfg(target_os = "linux")]
        {
            use crate::cgroup::Cgroup as _;
            if self
                .v2
                .as_ref()
                .is_some_and(|cg| !cg.populated() && cg.remove())
            {
                self.v2 = None;
            }
            self.v1.retain(|cg| cg.populated() || !cg.remove());
        }
        self.is_empty()
    }

    fn describe(&self) -> String {
        #[cfg(target_os = "linux")]
        {
            use crate::cgroup::Cgroup as _;
            let dirs: Vec<String> = (self.v2.iter().map(|cg| cg.dir().display().to_string()))
                .chain(self.v1.iter().map(|cg| cg.dir().display().to_string()))
                .collect();
            format!("cgroups {}", dirs.join(", "))
        }
        #[cfg(not(target_os = "linux"))]
        {
            "no cgroups".into()
        }
    }
}

/// One host process's process group and cgroups, owned by its actor.
#[derive(Debug)]
pub struct Containment {
    group: ProcessGroup,
    cgroups: Cgroups,
}

impl Containment {
    /// The process group id (Windows: the host's pid), for the records.
    pub fn group_id(&self) -> i32 {
        self.group.id()
    }

    /// The cgroup2 cgroup's directory, if it has one, for the records.
    pub fn cgroup_dir(&self) -> Option<PathBuf> {
        #[cfg(target_os = "linux")]
        if let Some(cg) = &self.cgroups.v2 {
            return Some(cg.dir.clone());
        }
        None
    }

    /// Ask the group to stop: SIGTERM (Windows: CTRL_BREAK).
    pub fn terminate(&self) {
        self.group.signal(StopSignal::Term);
    }

    /// SIGKILL the process group and, where there is one, the cgroup2
    /// cgroup (which also holds descendants that left the group).
    pub fn kill(&self) {
        self.group.signal(StopSignal::Kill);
        #[cfg(target_os = "linux")]
        if let Some(cg) = &self.cgroups.v2 {
            cg.kill();
        }
    }

    /// Whether a live (non-zombie) member of the process group remains.
    pub fn group_alive(&self) -> bool {
        self.group.alive()
    }

    /// Whether a process is left in the cgroup2 cgroup (`false` without one).
    pub fn cgroup_populated(&self) -> bool {
        #[cfg(target_os = "linux")]
        if let Some(cg) = &self.cgroups.v2 {
            use crate::cgroup::Cgroup as _;
            return cg.populated();
        }
        false
    }

    /// With a cgroup2 cgroup: a future that resolves when it empties. Every
    /// descendant is in it, so that is the event for "the last one died".
    pub fn emptied(&self) -> Option<Emptied> {
        #[cfg(target_os = "linux")]
        if let Some(cg) = &self.cgroups.v2 {
            return Some(Box::pin(cg.clone().emptied()));
        }
        None
    }

    /// What [`UsageProbe::read`] needs, to read the usage off the actor.
    pub fn usage_probe(&self) -> io::Result<UsageProbe> {
        self.group.usage_probe()
    }

    /// The live processes still contained, sorted: the group's members and
    /// the cgroup's. Where members cannot be listed (macOS, Windows), a
    /// group that is still alive is reported by its id.
    pub fn leftover_pids(&self) -> Vec<u32> {
        let mut pids = self.group.members();
        #[cfg(target_os = "linux")]
        if let Some(cg) = &self.cgroups.v2 {
            pids.extend(cg.pids());
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Let go: the group handle is dropped (on Windows that closes the job,
    /// which kills whatever is left in it) and the cgroups go to `cleanup`,
    /// which removes them once empty.
    pub fn release(self, cleanup: &Cleanup) {
        let Containment { cgroups, .. } = self;
        cgroups.release(cleanup);
    }
}

#[cfg(target_os = "linux")]
fn make_linux(id: &str, roots: &CgroupRoots, limits: Limits, launch: &mut LaunchSpec) -> Cgroups {
    use std::sync::Arc;

    use crate::cgroup::{CgroupV1, HostCgroup, Limit};
    let mut pending: Vec<Limit> = [
        limits.memory_max.map(Limit::Memory),
        limits.cpu_max_percent.map(Limit::Cpu),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut v2 = None;
    if let Some(root) = &roots.v2 {
        match HostCgroup::create(root, id) {
            Ok((cg, procs)) => {
                pending.retain(|&limit| {
                    if roots.v1(limit.controller()).is_some() {
                        return true;
                    }
                    match cg.limit(limit) {
                        Ok(()) => false,
                        Err(e) => {
                            tracing::warn!(extension_id = %id, ?limit, error = %e, "cannot write the limit to the host's cgroup");
                            true
                        }
                    }
                });
                launch.cgroup_procs.push(Arc::new(procs));
                // For clone3: without it the child joins through the procs.
                launch.cgroup_dir = cg.open_dir().ok().map(Arc::new);
                v2 = Some(cg);
            }
            Err(e) => {
                tracing::warn!(extension_id = %id, error = %e, "cannot create the host's cgroup; using its process group only")
            }
        }
    }
    let mut v1 = Vec::new();
    pending.retain(|&limit| {
        let Some(root) = roots.v1(limit.controller()) else {
            return true;
        };
        match CgroupV1::create(root, id, limit) {
            Ok((cg, procs)) => {
                launch.cgroup_procs.push(Arc::new(procs));
                v1.push(cg);
                false
            }
            Err(e) => {
                tracing::warn!(extension_id = %id, ?limit, error = %e, "cannot create the host's v1 cgroup");
                true
            }
        }
    });
    for limit in pending {
        tracing::warn!(extension_id = %id, ?limit, controller = limit.controller(), "limit not applied: no writable controller");
    }
    Cgroups { v2, v1 }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {

    use std::time::Duration;

    use super::*;

    fn shell(script: &str) -> LaunchSpec {
        LaunchSpec::plain("/bin/sh", &["-c", script])
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Without cgroups: the group is the containment; its live members are
    /// the leftovers until the kill lands.
    #[tokio::test]
    async fn a_group_alone_is_killed_and_reports_its_members() {
        let mut launch = shell("sleep 1000 & wait");
        let cgroups = Cgroups::make(
            "unit.group",
            &CgroupRoots::default(),
            Limits::default(),
            &mut launch,
        );
        assert!(launch.cgroup_procs.is_empty());
        let mut s = super::super::spawn(&launch).unwrap();
        let c = cgroups.contain(s.group);
        assert_eq!(c.group_id(), s.pid as i32);
        assert_eq!(c.cgroup_dir(), None);
        assert!(c.emptied().is_none());
        assert!(!c.cgroup_populated());
        // The shell and its sleep.
        until("the sleep never started", || c.leftover_pids().len() == 2).await;
        assert!(c.leftover_pids().contains(&s.pid));
        assert!(c.group_alive());
        c.kill();
        s.child.wait().await.unwrap();
        until("the group survived SIGKILL", || !c.group_alive()).await;
        assert_eq!(c.leftover_pids(), Vec::<u32>::new());
        c.release(&Cleanup::start());
    }

    /// With a cgroup2 cgroup (where one is writable): a descendant that
    /// left the group is still contained, listed, killed, and its emptying
    /// is an event.
    #[tokio::test]
    async fn a_cgroup_holds_what_left_the_group() {
        let Some(root) = crate::cgroup::detect() else {
            eprintln!("skipped: no writable cgroup2 subtree");
            return;
        };
        let roots = CgroupRoots {
            v2: Some(root),
            ..Default::default()
        };
        let mut launch = shell("setsid sleep 1000 & wait");
        let cgroups = Cgroups::make("unit.contained", &roots, Limits::default(), &mut launch);
        assert_eq!(launch.cgroup_procs.len(), 1);
        let mut s = super::super::spawn(&launch).unwrap();
        let c = cgroups.contain(s.group);
        let dir = c.cgroup_dir().expect("a cgroup");
        until("the sleep never started", || c.leftover_pids().len() == 2).await;
        assert!(c.cgroup_populated());
        let emptied = c.emptied().expect("cgroup2 events");
        c.kill();
        s.child.wait().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), emptied)
            .await
            .expect("no event within 5 s of the kill")
            .unwrap();
        assert_eq!(c.leftover_pids(), Vec::<u32>::new());
        c.release(&Cleanup::start());
        until("the cgroup was not removed", || !dir.exists()).await;
    }
}
