//! Whose process a control-socket peer is: the control plane is closed to
//! every process of every host (the host, its children, grandchildren that
//! called `setsid()`), whatever the sandbox profile.
//!
//! A peer pid is a host's when, in this order:
//!
//! 1. it is in one of this daemon's host cgroups (any hierarchy: a cgroup
//!    named `<daemon pid>.<id>.<n>`): every descendant of a host stays there,
//!    `setsid()` or not;
//! 2. its process group or session is led by a host's process (hosts lead
//!    their own groups);
//! 3. one of its ancestors is a host's process.
//!
//! The pid is read twice, before and after, with its start time: a peer that
//! exits meanwhile (its pid possibly reused) is refused. Where /proc is
//! missing (not Linux) only the process group and session are checked.

use std::collections::HashMap;

/// Decides about a peer from the hosts' current leader pids.
pub struct HostPeers {
    /// Leader pid → host id.
    #[cfg_attr(not(unix), allow(dead_code))]
    leaders: HashMap<i32, String>,
    /// `"<daemon pid>."`: the prefix of every host cgroup's name.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    cgroup_prefix: String,
}

/// What was found about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not a host's process (as far as can be told).
    Outsider,
    /// A process of this host (its id; `None` when only its cgroup says so).
    Host(Option<String>),
    /// The peer could not be read, or changed while it was read (it exited;
    /// the daemon is out of descriptors): refused, failing closed.
    Unknown(String),
}

impl HostPeers {
    pub fn new(leaders: impl IntoIterator<Item = (i32, String)>) -> Self {
        HostPeers {
            leaders: leaders.into_iter().collect(),
            cgroup_prefix: format!("{}.", std::process::id()),
        }
    }

    pub fn judge(&self, pid: i32) -> Verdict {
        #[cfg(target_os = "linux")]
        {
            let before = match Proc::read(pid) {
                Ok(p) => p,
                Err(e) => return Verdict::Unknown(format!("cannot read /proc/{pid}: {e}")),
            };
            let verdict = self.judge_proc(pid, &before);
            match Proc::read(pid) {
                Ok(after) if after.start_time == before.start_time => verdict,
                Ok(_) => Verdict::Unknown(format!("pid {pid} was reused while it was checked")),
                Err(e) => Verdict::Unknown(format!("cannot read /proc/{pid}: {e}")),
            }
        }
        #[cfg(all(unix, not(target_os = "linux")))]
        {
            use nix::unistd::{Pid, getpgid, getsid};
            let p = Some(Pid::from_raw(pid));
            let (Ok(g), Ok(s)) = (getpgid(p), getsid(p)) else {
                return Verdict::Unknown(format!("pid {pid} is gone"));
            };
            match self
                .leaders
                .get(&g.as_raw())
                .or_else(|| self.leaders.get(&s.as_raw()))
            {
                Some(id) => Verdict::Host(Some(id.clone())),
                None => Verdict::Outsider,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = pid;
            Verdict::Outsider
        }
    }

    #[cfg(target_os = "linux")]
    fn judge_proc(&self, pid: i32, p: &Proc) -> Verdict {
        let by_leader = |pid: i32| self.leaders.get(&pid).cloned();
        if let Some(id) = by_leader(p.pgrp).or_else(|| by_leader(p.session)) {
            return Verdict::Host(Some(id));
        }
        if let Some(id) = by_leader(pid) {
            return Verdict::Host(Some(id));
        }
        if p.cgroups.iter().any(|path| {
            path.split('/')
                .any(|part| part.starts_with(&self.cgroup_prefix))
        }) {
            return Verdict::Host(None);
        }
        // Ancestry, up to init or the daemon (bounded: a pid chain is short).
        let me = std::process::id() as i32;
        let mut ppid = p.ppid;
        for _ in 0..64 {
            if let Some(id) = by_leader(ppid) {
                return Verdict::Host(Some(id));
            }
            if ppid <= 1 || ppid == me {
                break;
            }
            match Proc::read(ppid) {
                Ok(up) => ppid = up.ppid,
                Err(_) => break,
            }
        }
        Verdict::Outsider
    }
}

/// What /proc says about one process.
#[cfg(target_os = "linux")]
struct Proc {
    ppid: i32,
    pgrp: i32,
    session: i32,
    start_time: u64,
    /// The cgroup path in each hierarchy.
    cgroups: Vec<String>,
}

#[cfg(target_os = "linux")]
impl Proc {
    fn read(pid: i32) -> std::io::Result<Proc> {
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "unparsable stat");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let rest = &stat[stat.rfind(')').ok_or_else(bad)? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the command name, field N of stat(5) is at index N - 3.
        let num = |n: usize| {
            f.get(n - 3)
                .and_then(|v| v.parse::<i64>().ok())
                .ok_or_else(bad)
        };
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2).map(String::from))
            .collect();
        Ok(Proc {
            ppid: num(4)? as i32,
            pgrp: num(5)? as i32,
            session: num(6)? as i32,
            start_time: num(22)? as u64,
            cgroups,
        })
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_an_outsider_until_its_group_is_a_hosts() {
        let me = std::process::id() as i32;
        assert_eq!(HostPeers::new([]).judge(me), Verdict::Outsider);
        let group = nix::unistd::getpgrp().as_raw();
        assert_eq!(
            HostPeers::new([(group, "acme.a".to_string())]).judge(me),
            Verdict::Host(Some("acme.a".into()))
        );
        let session = nix::unistd::getsid(None).unwrap().as_raw();
        assert_eq!(
            HostPeers::new([(session, "acme.s".to_string())]).judge(me),
            Verdict::Host(Some("acme.s".into()))
        );
    }

    #[test]
    fn a_child_of_a_host_leader_is_the_hosts() {
        // This test process plays the host leader; a child in its own
        // session (setsid) is still found by ancestry.
        let mut child = std::process::Command::new("setsid")
            .args(["sleep", "5"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let me = std::process::id() as i32;
        // setsid(1) may fork when it leads a group already; the direct
        // child is what SO_PEERCRED would name here.
        let v = HostPeers::new([(me, "acme.parent".to_string())]).judge(pid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            matches!(v, Verdict::Host(Some(ref id)) if id == "acme.parent")
                || matches!(v, Verdict::Unknown(_)),
            "{v:?}"
        );
    }

    #[test]
    fn a_gone_pid_is_unknown() {
        assert!(matches!(
            HostPeers::new([]).judge(i32::MAX - 1),
            Verdict::Unknown(_)
        ));
    }
}
