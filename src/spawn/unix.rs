//! Process groups on Unix: each host leads its own group (`setpgid(0, 0)`
//! before exec), so one `killpg` reaches everything it started that did not
//! call `setsid()` (a cgroup catches those, on Linux).

use std::io;

use super::StopSignal;
#[cfg(target_os = "linux")]
use super::parse_stat_state_pgrp;

/// A host's process group. The group id is the host's pid.
#[derive(Debug)]
pub struct ProcessGroup {
    pgid: i32,
}

impl ProcessGroup {
    pub(super) fn led_by(pid: u32) -> ProcessGroup {
        ProcessGroup { pgid: pid as i32 }
    }

    /// The process group id, as `running.json` records it.
    pub fn id(&self) -> i32 {
        self.pgid
    }

    /// `SIGTERM` or `SIGKILL` to every member.
    pub fn signal(&self, sig: StopSignal) {
        signal_group(self.pgid, sig);
    }

    /// Whether a live member remains.
    pub fn alive(&self) -> bool {
        group_alive(self.pgid)
    }

    /// The group's live (non-zombie) members. Without `/proc` they cannot
    /// be listed: a group that is alive is then reported by its id.
    pub fn members(&self) -> Vec<u32> {
        match group_members(self.pgid) {
            Ok(pids) => pids,
            Err(_) if group_alive(self.pgid) => vec![self.pgid as u32],
            Err(_) => Vec::new(),
        }
    }

    /// What [`UsageProbe::read`] needs, to read the group's usage off the
    /// actor (it scans `/proc`).
    pub fn usage_probe(&self) -> io::Result<UsageProbe> {
        Ok(UsageProbe { pgid: self.pgid })
    }
}

/// Reads what a group uses; `Send`, for a blocking thread.
#[derive(Debug)]
pub struct UsageProbe {
    pgid: i32,
}

impl UsageProbe {
    /// What the group's live processes use now (one `/proc` scan on Linux;
    /// elsewhere only that the group exists). Blocking.
    pub fn read(self) -> io::Result<crate::protocol::GroupUsage> {
        group_usage(self.pgid)
    }
}

#[cfg(target_os = "linux")]
fn group_usage(pgid: i32) -> io::Result<crate::protocol::GroupUsage> {
    use nix::unistd::{SysconfVar, sysconf};
    let ticks = sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as u64;
    let page = sysconf(SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    let (mut processes, mut cpu_ticks, mut rss_pages) = (0u32, 0u64, 0u64);
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(u) = super::parse_stat_usage(&stat)
            && u.pgrp == pgid
            && u.state != 'Z'
            && u.state != 'X'
        {
            processes += 1;
            cpu_ticks += u.cpu_ticks;
            rss_pages += u.rss_pages;
        }
    }
    Ok(crate::protocol::GroupUsage {
        processes,
        rss_bytes: Some(rss_pages * page),
        cpu_ms: Some(cpu_ticks * 1000 / ticks),
    })
}

#[cfg(not(target_os = "linux"))]
fn group_usage(pgid: i32) -> io::Result<crate::protocol::GroupUsage> {
    Ok(crate::protocol::GroupUsage {
        processes: u32::from(group_alive(pgid)),
        rss_bytes: None,
        cpu_ms: None,
    })
}

/// Signal every process in group `pgid`. A group that is already gone is not
/// an error.
pub fn signal_group(pgid: i32, sig: StopSignal) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let s = match sig {
        StopSignal::Term => Signal::SIGTERM,
        StopSignal::Kill => Signal::SIGKILL,
    };
    if pgid <= 1 {
        return; // never signal "all processes" or init's group
    }
    match killpg(Pid::from_raw(pgid), s) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, signal = ?s, error = %e, "signalling process group failed"),
    }
}

/// Whether any live (non-zombie) process is still in group `pgid`.
///
/// `killpg(pgid, 0)` answers "no" cheaply in the common case. When it says
/// "yes" the members may all be zombies waiting for a reaper that never comes
/// (an init that does not reap, as on this project's CI VMs), so on Linux
/// `/proc` decides.
pub fn group_alive(pgid: i32) -> bool {
    use nix::sys::signal::killpg;
    use nix::unistd::Pid;
    if pgid <= 1 {
        return false;
    }
    match killpg(Pid::from_raw(pgid), None) {
        Err(nix::errno::Errno::ESRCH) => false,
        _ => group_members(pgid).map(|m| !m.is_empty()).unwrap_or(true),
    }
}

/// The non-zombie processes of group `pgid`, from `/proc`.
#[cfg(target_os = "linux")]
fn group_members(pgid: i32) -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((state, pgrp)) = parse_stat_state_pgrp(&stat)
            && pgrp == pgid
            && state != 'Z'
            && state != 'X'
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}

#[cfg(not(target_os = "linux"))]
fn group_members(_pgid: i32) -> io::Result<Vec<u32>> {
    // No /proc: the caller trusts killpg, which counts zombies as members.
    Err(io::Error::from(io::ErrorKind::Unsupported))
}
