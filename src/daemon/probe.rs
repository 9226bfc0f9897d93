//! What this machine offers the daemon, probed once at start-up: where
//! host cgroups can go ([`cgroup_roots`]: a writable cgroup2 subtree, and
//! the v1 hierarchies of the limits cgroup2 cannot apply here), and what
//! the kernel supports of the sandbox ([`sandbox_support`], for
//! `daemon.info`; fatal with `sandbox.require`).

#[cfg(target_os = "linux")]
use std::path::{Path, PathBuf};

use super::settings::SandboxSettings;
use crate::protocol::SandboxInfo;
#[cfg(target_os = "linux")]
use crate::protocol::{CpuLimitInfo, MemoryLimitInfo};
use crate::supervisor::CgroupRoots;

/// Where host cgroups go, when `sandbox.cgroup = "auto"`: a writable
/// cgroup2 subtree, and the v1 hierarchies (memory, cpu) of limits cgroup2
/// cannot apply here.
pub fn cgroup_roots(sandbox: &SandboxSettings) -> CgroupRoots {
    #[cfg(target_os = "linux")]
    if sandbox.cgroup == crate::config::CgroupMode::Auto {
        let v2 = crate::cgroup::detect();
        match &v2 {
            Some(r) => tracing::info!(cgroup = %r.display(), "one cgroup per host"),
            None => tracing::info!("no writable cgroup2: hosts are tracked by process group only"),
        }
        let memory_v1 = v1_root(v2.as_deref(), "memory");
        let cpu_v1 = v1_root(v2.as_deref(), "cpu");
        return CgroupRoots {
            v2,
            memory_v1,
            cpu_v1,
        };
    }
    let _ = sandbox;
    CgroupRoots::default()
}

/// The v1 hierarchy of `controller`, when the cgroup2 subtree cannot apply
/// its limits (hybrid layouts). Found at start-up whatever the config says,
/// so a per-host limit works without a daemon-wide default.
#[cfg(target_os = "linux")]
fn v1_root(v2: Option<&Path>, controller: &str) -> Option<PathBuf> {
    if v2.is_some_and(|r| crate::cgroup::delegates(r, controller)) {
        return None;
    }
    let root = crate::cgroup::detect_v1(controller);
    if let Some(r) = &root {
        tracing::info!(cgroup = %r.display(), controller, "cgroup2 lacks this controller here: its limits use the v1 hierarchy");
    }
    root
}

/// How `controller`'s limits are enforced, for `daemon.info`.
#[cfg(target_os = "linux")]
fn limit_via(roots: &CgroupRoots, controller: &str) -> &'static str {
    if roots.v1(controller).is_some() {
        "cgroup1"
    } else if roots
        .v2
        .as_deref()
        .is_some_and(|r| crate::cgroup::delegates(r, controller))
    {
        "cgroup2"
    } else {
        "unavailable"
    }
}

/// Probe the kernel once: log what the sandbox cannot do here (or refuse to
/// start with `sandbox.require`), and report it in `daemon.info`.
#[cfg(target_os = "linux")]
pub fn sandbox_support(
    sandbox: &SandboxSettings,
    roots: &CgroupRoots,
) -> anyhow::Result<Option<SandboxInfo>> {
    let s = crate::sandbox::support();
    if sandbox.profile == crate::config::SandboxProfile::Off {
        tracing::warn!(
            "sandbox.profile = \"off\": hosts run without Landlock, seccomp or NO_NEW_PRIVS"
        );
    } else if s.landlock == "unsupported" || s.seccomp == "unsupported" {
        if sandbox.require {
            anyhow::bail!(
                "sandbox.require is set but this kernel lacks it: landlock {}, seccomp {}",
                s.landlock,
                s.seccomp
            );
        }
        tracing::warn!(landlock = %s.landlock, seccomp = %s.seccomp, "the sandbox is degraded on this kernel");
    }
    if nix::unistd::geteuid().is_root() && !sandbox.run_as {
        tracing::warn!(
            "running as root without [sandbox] run_as: hosts run as root (with every capability dropped); \
             to run them as an unprivileged user, set run_as = \"nobody\" (or a dedicated user) under [sandbox]"
        );
    }
    let via = |controller: &str, default_set: bool| {
        let via = limit_via(roots, controller);
        if via == "unavailable" && default_set {
            tracing::warn!(
                controller,
                "a default {controller} limit is set but no writable {controller} controller exists: it is not enforced"
            );
        }
        via.to_string()
    };
    Ok(Some(SandboxInfo {
        cgroup: match &roots.v2 {
            Some(r) => r.display().to_string(),
            None => "unavailable".to_string(),
        },
        memory_limit: MemoryLimitInfo {
            via: via("memory", sandbox.memory_max_mb.is_some()),
            mb: sandbox.memory_max_mb,
        },
        cpu_limit: CpuLimitInfo {
            via: via("cpu", sandbox.cpu_max_percent.is_some()),
            percent: sandbox.cpu_max_percent,
        },
        landlock: s.landlock,
        profile: match sandbox.profile {
            crate::config::SandboxProfile::Default => "default",
            crate::config::SandboxProfile::Off => "off",
            crate::config::SandboxProfile::Strict => "strict",
        }
        .to_string(),
        seccomp: s.seccomp,
    }))
}

#[cfg(not(target_os = "linux"))]
pub fn sandbox_support(
    _sandbox: &SandboxSettings,
    _roots: &CgroupRoots,
) -> anyhow::Result<Option<SandboxInfo>> {
    Ok(None)
}
