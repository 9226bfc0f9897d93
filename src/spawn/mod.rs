//! Spawning extension hosts and signalling their process groups.
//!
//! Knows processes, paths and signals; knows nothing about host states,
//! subscribers or JSON-RPC. [`prepare`] is the blocking half of a start,
//! [`containment`] what holds a host's processes afterwards.
//!
//! This file holds the types and the common spawn path ([`spawn`]); which
//! Node runs is `node.rs`'s, the strict (bwrap) profile's spawn
//! `strict.rs`'s and the fork path's Linux pre-exec steps `pre_exec.rs`'s;
//! the `clone3` path (Linux, default and `off` profiles) is `clone3.rs`'s
//! and the spawned process's handle `process.rs`'s. [`Spawner`]
//! (`spawner.rs`) is the thread every host is created from.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use tokio::process::Command;

pub mod cleanup;
#[cfg(target_os = "linux")]
pub mod clone3;
pub mod containment;
mod node;
#[cfg(target_os = "linux")]
mod pre_exec;
pub mod prepare;
pub mod process;
mod spawner;
#[cfg(target_os = "linux")]
mod strict;
#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::{ProcessGroup, UsageProbe, group_alive, signal_group};
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::{ProcessGroup, UsageProbe};

pub use cleanup::Cleanup;
pub use containment::{CgroupRoots, Cgroups, Containment, Emptied, Limits};
pub use node::{resolve_node, target_triple};
pub use prepare::{HostLaunch, Prepared, SandboxPolicy, prepare};
pub use process::HostProcess;
pub use spawner::Spawner;

/// Why a host could not be spawned.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpawnError {
    #[error(
        "Node.js not found: tried {tried}; install Node.js, set `node` in the config, or bundle it beside the daemon"
    )]
    NodeNotFound { tried: String },
    #[error("{path}: {source}")]
    Exec {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error(transparent)]
    Verify(#[from] crate::verify::VerifyError),
    #[cfg(target_os = "linux")]
    #[error("cannot build the sandbox: {0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
}

impl SpawnError {
    /// The path the failure is about, for the client.
    pub fn path(&self) -> Option<&Path> {
        match self {
            SpawnError::NodeNotFound { .. } => None,
            SpawnError::Exec { path, .. } => Some(path),
            SpawnError::Verify(crate::verify::VerifyError::Read { path, .. })
            | SpawnError::Verify(crate::verify::VerifyError::Mismatch { path, .. }) => Some(path),
            #[cfg(target_os = "linux")]
            SpawnError::Sandbox(_) => None,
        }
    }
}

/// The unprivileged user a root daemon runs hosts as (`[sandbox] run_as`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostUser {
    pub uid: u32,
    pub gid: u32,
}

impl HostUser {
    /// A user name, or a uid given as digits; its primary group.
    pub fn lookup(user: &str) -> Result<HostUser, String> {
        #[cfg(unix)]
        {
            use nix::unistd::{Uid, User};
            let found = match user.parse::<u32>() {
                Ok(uid) => User::from_uid(Uid::from_raw(uid)),
                Err(_) => User::from_name(user),
            };
            match found {
                Ok(Some(u)) => Ok(HostUser {
                    uid: u.uid.as_raw(),
                    gid: u.gid.as_raw(),
                }),
                Ok(None) => Err(format!("no such user: {user:?}")),
                Err(e) => Err(format!("cannot look up user {user:?}: {e}")),
            }
        }
        #[cfg(not(unix))]
        {
            Err(format!("run_as ({user:?}) is supported on Unix only"))
        }
    }

    /// Give `path` to this user (no-op for root's own files elsewhere).
    pub fn own(&self, path: &Path) -> io::Result<()> {
        #[cfg(unix)]
        {
            std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
        }
        #[cfg(not(unix))]
        {
            let _ = path;
            Ok(())
        }
    }
}

/// Everything needed to run one host process.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub node: PathBuf,
    /// Options for Node, before the entry.
    pub node_args: Vec<String>,
    pub entry: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The complete environment of the child.
    pub env: BTreeMap<OsString, OsString>,
    /// A verified, open Node binary: executed through this descriptor
    /// (`/proc/self/fd/N`), so what runs is what was hashed.
    pub exec_fd: Option<Arc<std::fs::File>>,
    /// The sandbox profile; `None` applies nothing beyond PDEATHSIG.
    #[cfg(target_os = "linux")]
    pub sandbox: Option<crate::sandbox::SandboxPolicy>,
    /// The `cgroup.procs` of each cgroup the host joins (its cgroup2 cgroup,
    /// a v1 memory cgroup), opened by the parent: the child joins by writing
    /// "0" to each.
    #[cfg(target_os = "linux")]
    pub cgroup_procs: Vec<Arc<std::fs::File>>,
    /// The cgroup2 cgroup's directory (`O_PATH`), whose `cgroup.procs` is
    /// the first of `cgroup_procs`: `clone3` creates the child in it.
    #[cfg(target_os = "linux")]
    pub cgroup_dir: Option<Arc<std::fs::File>>,
    /// Run as this user instead of the daemon's (root daemons only).
    pub run_as: Option<HostUser>,
}

impl LaunchSpec {
    /// `program args…` in `/`, with only `PATH`, unsandboxed: for tests.
    #[cfg(test)]
    pub(crate) fn plain(program: &str, args: &[&str]) -> LaunchSpec {
        let mut env = BTreeMap::new();
        if let Some(path) = std::env::var_os("PATH") {
            env.insert(OsString::from("PATH"), path);
        }
        LaunchSpec {
            node: program.into(),
            node_args: Vec::new(),
            entry: args.first().copied().unwrap_or_default().into(),
            args: args.iter().skip(1).map(|a| a.to_string()).collect(),
            cwd: "/".into(),
            env,
            exec_fd: None,
            #[cfg(target_os = "linux")]
            sandbox: None,
            #[cfg(target_os = "linux")]
            cgroup_procs: Vec::new(),
            #[cfg(target_os = "linux")]
            cgroup_dir: None,
            run_as: None,
        }
    }
}

/// A freshly spawned host: the child (stdout and stderr piped) and its process
/// group (Unix: the group it leads; Windows: its kill-on-close Job Object).
pub struct Spawned {
    pub child: HostProcess,
    pub pid: u32,
    pub group: ProcessGroup,
}

/// Spawn `node <entry> [args…]` in a new process group with stdin null and
/// stdout/stderr piped. The Node binary is never modified. On Linux the
/// default and `off` profiles go by `clone3` ([`clone3`]) unless
/// `DSCODE_HOSTD_SPAWN=fork` or the kernel lacks it; everything else forks.
pub fn spawn(spec: &LaunchSpec) -> Result<Spawned, SpawnError> {
    #[cfg(target_os = "linux")]
    {
        spawn_by(spec, clone3::SpawnPath::configured())
    }
    #[cfg(not(target_os = "linux"))]
    {
        spawn_prepared(spec)
    }
}

/// [`spawn`] by the given path (tests pick one).
#[cfg(target_os = "linux")]
pub(crate) fn spawn_by(spec: &LaunchSpec, path: clone3::SpawnPath) -> Result<Spawned, SpawnError> {
    let mut prepared = match &spec.sandbox {
        Some(policy) => Some(crate::sandbox::prepare(policy)?),
        None => None,
    };
    let strict = prepared.as_ref().is_some_and(|p| p.bwrap_seccomp.is_some());
    if path == clone3::SpawnPath::Auto
        && !strict
        && let Some(spawned) = clone3::spawn(spec, prepared.as_mut())?
    {
        tracing::debug!(pid = spawned.pid, "spawned by clone3");
        return Ok(spawned);
    }
    tracing::debug!(program = %spec.node.display(), "spawning by fork");
    spawn_prepared(spec, prepared)
}

/// The `fork` path: `tokio::process::Command` with `pre_exec` steps.
fn spawn_prepared(
    spec: &LaunchSpec,
    #[cfg(target_os = "linux")] prepared: Option<crate::sandbox::Prepared>,
) -> Result<Spawned, SpawnError> {
    #[cfg(target_os = "linux")]
    if prepared.as_ref().is_some_and(|p| p.bwrap_seccomp.is_some()) {
        let policy = spec.sandbox.as_ref().expect("prepared from a policy");
        return strict::spawn_strict(spec, policy, prepared.expect("checked above"));
    }
    let mut cmd = match &spec.exec_fd {
        #[cfg(target_os = "linux")]
        Some(f) => {
            use std::os::fd::AsRawFd;
            let mut cmd = Command::new(format!("/proc/self/fd/{}", f.as_raw_fd()));
            cmd.arg0(&spec.node);
            cmd
        }
        // Elsewhere the path runs while the verified file is held open
        // (on Windows without FILE_SHARE_WRITE/DELETE, so it cannot be
        // changed or replaced meanwhile; on macOS a window remains).
        _ => Command::new(&spec.node),
    };
    cmd.args(&spec.node_args)
        .arg(&spec.entry)
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    #[cfg(unix)]
    cmd.process_group(0);
    #[cfg(windows)]
    cmd.creation_flags(windows::CREATE_NEW_PROCESS_GROUP);
    #[cfg(target_os = "linux")]
    {
        // Before PDEATHSIG: a change of credentials clears it.
        pre_exec::become_user(&mut cmd, spec.run_as);
        pre_exec::die_with_daemon(&mut cmd);
        pre_exec::join_cgroup(&mut cmd, spec);
    }
    #[cfg(target_os = "linux")]
    if let Some(mut prepared) = prepared {
        // SAFETY: runs in the forked child after the closures above;
        // `Prepared::apply` makes raw syscalls only (setrlimit, prctl,
        // landlock_restrict_self, seccomp) on state built in the parent.
        unsafe {
            cmd.pre_exec(move || prepared.apply());
        }
    }
    finish_spawn(cmd, spec)
}

fn finish_spawn(mut cmd: Command, spec: &LaunchSpec) -> Result<Spawned, SpawnError> {
    let child = cmd.spawn().map_err(|source| SpawnError::Exec {
        path: spec.node.clone(),
        source: Arc::new(source),
    })?;
    let pid = child.id().ok_or_else(|| SpawnError::Exec {
        path: spec.node.clone(),
        source: Arc::new(io::Error::other("child exited before its pid was read")),
    })?;
    #[cfg(unix)]
    let group = ProcessGroup::led_by(pid);
    #[cfg(windows)]
    let (child, group) = {
        let mut child = child;
        let contained = match child.raw_handle() {
            Some(raw) => ProcessGroup::contain(raw, pid),
            None => Err(io::Error::other("child exited before its handle was read")),
        };
        match contained {
            Ok(group) => (child, group),
            Err(source) => {
                // Never leave a process running outside a job.
                let _ = child.start_kill();
                return Err(SpawnError::Exec {
                    path: spec.node.clone(),
                    source: Arc::new(source),
                });
            }
        }
    };
    Ok(Spawned {
        child: HostProcess::from_child(child, pid),
        pid,
        group,
    })
}

/// A signal the supervisor sends to a host's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Term,
    Kill,
}

/// The fields of `/proc/<pid>/stat` that usage needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatUsage {
    pub state: char,
    pub pgrp: i32,
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
    /// Resident set, pages.
    pub rss_pages: u64,
}

/// Parse the fields [`StatUsage`] holds; the command name is in parentheses
/// and may itself contain spaces and `)`.
pub fn parse_stat_usage(stat: &str) -> Option<StatUsage> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, so field N is index N - 3.
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(StatUsage {
        state: f.first()?.chars().next()?,
        pgrp: f.get(2)?.parse().ok()?,
        cpu_ticks: num(14)? + num(15)?,
        rss_pages: num(24)?,
    })
}

/// From `/proc/<pid>/stat`: the state letter and the process group id. The
/// command name is in parentheses and may itself contain spaces and `)`.
pub fn parse_stat_state_pgrp(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// How a process ended, as the supervisor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitOutcome {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl From<std::process::ExitStatus> for ExitOutcome {
    fn from(status: std::process::ExitStatus) -> Self {
        #[cfg(unix)]
        let signal = std::os::unix::process::ExitStatusExt::signal(&status);
        #[cfg(not(unix))]
        let signal = None;
        ExitOutcome {
            code: status.code(),
            signal,
        }
    }
}

impl std::fmt::Display for ExitOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exited with code {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => write!(f, "exited"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_handles_odd_command_names() {
        let s = "1234 (we ird) cmd)) S 1 1234 1234 0 -1 4194560 100";
        assert_eq!(parse_stat_state_pgrp(s), Some(('S', 1234)));
        assert_eq!(parse_stat_state_pgrp("1 (x) Z 0 7 7"), Some(('Z', 7)));
        assert_eq!(parse_stat_state_pgrp("garbage"), None);
    }

    #[test]
    fn stat_usage_fields() {
        // A real line (node), with an awkward command name spliced in.
        let s = "4242 (no de) x) S 1 4242 4242 0 -1 4194304 3500 0 0 0 120 35 0 0 20 0 11 0 9055 1163313152 12345 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat_usage(s),
            Some(StatUsage {
                state: 'S',
                pgrp: 4242,
                cpu_ticks: 155,
                rss_pages: 12345,
            })
        );
        assert_eq!(parse_stat_usage("1 (x) Z 0 7"), None);
    }

    #[test]
    fn exit_outcome_reads_like_the_protocol_reasons() {
        let e = ExitOutcome {
            code: Some(3),
            signal: None,
        };
        assert_eq!(e.to_string(), "exited with code 3");
        let e = ExitOutcome {
            code: None,
            signal: Some(9),
        };
        assert_eq!(e.to_string(), "killed by signal 9");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn group_signal_reaches_grandchildren() {
        let mut env = BTreeMap::new();
        env.insert(OsString::from("PATH"), std::env::var_os("PATH").unwrap());
        let spec = LaunchSpec {
            node: "/bin/sh".into(),
            node_args: Vec::new(),
            entry: "-c".into(),
            args: vec!["sleep 1000 & wait".into()],
            cwd: "/".into(),
            env,
            exec_fd: None,
            sandbox: None,
            cgroup_procs: Vec::new(),
            cgroup_dir: None,
            run_as: None,
        };
        let mut s = spawn(&spec).unwrap();
        assert!(s.group.alive());
        s.group.signal(StopSignal::Kill);
        let status = s.child.wait().await.unwrap();
        assert_eq!(ExitOutcome::from(status).signal, Some(9));
        // The grandchild may linger as a zombie for a moment; wait with a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while s.group.alive() {
            assert!(
                std::time::Instant::now() < deadline,
                "group survived SIGKILL"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}
