//! `<state>/running.json`: every live host process (pid, process group, start
//! time), rewritten atomically (0600), so that a daemon started after a
//! SIGKILLed one can kill what it left behind — and never a process it cannot
//! prove it started: a recycled pid, a process group the record merely names,
//! or a cgroup outside its own root.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::protocol::Recovered;

/// One live host process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub extension_id: String,
    pub pid: i32,
    pub pgid: i32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks since boot) on Linux; µs
    /// since the epoch on macOS.
    pub start_time: u64,
    /// The host's cgroup directory, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

/// The start time of `pid` (µs since the epoch), if it is alive (zombies
/// count as gone).
#[cfg(target_os = "macos")]
pub fn start_time(pid: i32) -> Option<u64> {
    // SAFETY: a plain-data struct; all zeroes is a valid value.
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: the pointer and size describe `info`, which outlives the call.
    let n =
        unsafe { libc::proc_pidinfo(pid, libc::PROC_PIDTBSDINFO, 0, (&raw mut info).cast(), size) };
    if n != size || info.pbi_status == libc::SZOMB {
        return None;
    }
    Some(info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec)
}

/// No start times here: nothing is recorded, nothing is reaped.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn start_time(_pid: i32) -> Option<u64> {
    None
}

/// The start time of `pid`, if it is alive (zombies count as gone).
#[cfg(target_os = "linux")]
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    if matches!(f.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    // After the command: state is field 3, so starttime (22) is index 19.
    f.get(19)?.parse().ok()
}

/// See the module documentation. Updates are cheap (a map under a lock); a
/// writer task coalesces them into at most one rewrite per 10 ms.
pub struct Records {
    live: Mutex<BTreeMap<String, Record>>,
    changed: Notify,
}

impl Records {
    /// Start the writer task for `path` (needs a tokio runtime).
    pub fn start(path: PathBuf) -> Arc<Records> {
        let r = Arc::new(Records {
            live: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
        });
        let me = r.clone();
        tokio::spawn(async move {
            loop {
                me.changed.notified().await;
                let snapshot: Vec<Record> = me.lock().values().cloned().collect();
                let path = path.clone();
                let res = tokio::task::spawn_blocking(move || write_atomic(&path, &snapshot)).await;
                if let Ok(Err(e)) = res {
                    tracing::warn!(error = %e, "cannot write running.json");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        r
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Record>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn up(&self, extension_id: &str, pid: u32, pgid: i32, cgroup: Option<PathBuf>) {
        let pid = pid as i32;
        let Some(start_time) = start_time(pid) else {
            return;
        };
        self.lock().insert(
            extension_id.to_string(),
            Record {
                extension_id: extension_id.to_string(),
                pid,
                pgid,
                start_time,
                cgroup,
            },
        );
        self.changed.notify_one();
    }

    pub fn down(&self, extension_id: &str) {
        if self.lock().remove(extension_id).is_some() {
            self.changed.notify_one();
        }
    }
}

/// Temp file (0600 whatever the umask), fsync, rename, fsync the directory.
fn write_atomic(path: &Path, records: &[Record]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        // A temp file left by an older daemon keeps its mode: set it.
        #[cfg(unix)]
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        f.write_all(&serde_json::to_vec_pretty(records).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// What this daemon owns, against which a record's claims are checked
/// before anything is killed.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// The daemon's cgroup2 root(s): a recorded cgroup must lie under one
    /// of them.
    pub cgroup_roots: Vec<PathBuf>,
    /// The daemon's runtime directory (the socket's): every host it starts
    /// has `DSCODE_IPC_URL=ipc://<runtime>/ipc/…` in its environment, and so
    /// do its descendants unless they drop it. Checked on Linux, where
    /// `/proc/<pid>/environ` tells.
    pub runtime_dir: PathBuf,
}

impl Provenance {
    /// Whether `dir` is a cgroup under one of our roots (no `..`, resolved).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn owns_cgroup(&self, dir: &Path) -> bool {
        if dir
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return false;
        }
        let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        self.cgroup_roots.iter().any(|root| {
            let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
            real != root && real.starts_with(&root)
        })
    }

    /// Whether `pid` carries the environment of one of our hosts.
    #[cfg(target_os = "linux")]
    fn started_by_us(&self, pid: i32) -> bool {
        let prefix = format!(
            "DSCODE_IPC_URL=ipc://{}/",
            crate::ipc::transport::ipc_root(&self.runtime_dir).display()
        );
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
            env.split(|b| *b == 0)
                .any(|kv| kv.starts_with(prefix.as_bytes()))
        })
    }

    /// macOS: no environment to check; pid, group and start time must do.
    #[cfg(not(target_os = "linux"))]
    #[cfg_attr(not(target_os = "macos"), allow(dead_code))]
    fn started_by_us(&self, _pid: i32) -> bool {
        true
    }
}

/// Whether `running.json` is a file only we could have written: ours, and
/// not writable by group or others. Its records decide what gets killed.
#[cfg(unix)]
fn trustworthy(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = meta.permissions().mode() & 0o7777;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_file() {
        Err("not a regular file".into())
    } else if meta.uid() != me {
        Err(format!("owned by uid {}", meta.uid()))
    } else if mode & 0o022 != 0 {
        Err(format!("writable by group or others (mode {mode:04o})"))
    } else {
        Ok(())
    }
}

#[cfg(not(unix))]
fn trustworthy(_meta: &std::fs::Metadata) -> Result<(), String> {
    Ok(())
}

/// At start-up: kill what a previous daemon's record says is still running,
/// but only what the record proves this daemon's predecessor started (see
/// [`reap_record`]). A `running.json` that is not ours and private is
/// ignored. Returns every recorded host, and whether anything of it was
/// reaped.
pub fn reap_leftovers(path: &Path, provenance: &Provenance) -> Vec<Recovered> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Vec::new();
    };
    if let Err(problem) = trustworthy(&meta) {
        tracing::warn!(path = %path.display(), problem, "ignoring running.json: it is not a private file of ours");
        return Vec::new();
    }
    let Ok(text) = std::fs::read(path) else {
        return Vec::new();
    };
    let records: Vec<Record> = match serde_json::from_slice(&text) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable running.json");
            return Vec::new();
        }
    };
    // Elsewhere there are no start times to tell a recycled pid from a
    // leftover: kill nothing (on Windows the job objects took the hosts down
    // with the daemon).
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    let reaped = {
        drop((records, provenance));
        Vec::new()
    };
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    let reaped = records
        .iter()
        .map(|r| {
            let killed = reap_record(r, provenance);
            Recovered {
                extension_id: r.extension_id.clone(),
                pid: r.pid,
                reaped: !killed.is_empty(),
                detail: if killed.is_empty() {
                    "nothing of it was running (or nothing proved it ours)".into()
                } else {
                    killed.join("; ")
                },
            }
        })
        .collect();
    let _ = write_atomic(path, &[]);
    reaped
}

/// Kill what one record left behind, if it proves we started it:
///
/// - its cgroup (killed whole, escapees too) only if it lies under one of
///   our cgroup roots;
/// - its process group only if the record names a group leader
///   (`pid == pgid`), and either that leader is alive, still leads its
///   group, has the recorded start time and our hosts' environment, or it
///   is gone and only members that started after it and carry our hosts'
///   environment are killed.
#[cfg(any(target_os = "linux", target_os = "macos"))]
fn reap_record(r: &Record, provenance: &Provenance) -> Vec<String> {
    let mut reaped = Vec::new();
    #[cfg(target_os = "linux")]
    if let Some(dir) = r.cgroup.as_ref() {
        if !provenance.owns_cgroup(dir) {
            tracing::warn!(extension_id = %r.extension_id, cgroup = %dir.display(), "recorded cgroup is not under this daemon's cgroup root; left alone");
        } else if dir.is_dir() {
            use crate::cgroup::Cgroup as _;
            let cg = crate::cgroup::HostCgroup { dir: dir.clone() };
            if cg.populated() {
                cg.kill();
                reaped.push(format!("{} (cgroup {})", r.extension_id, dir.display()));
                // SIGKILLed processes are gone within milliseconds; wait a
                // little so the cgroup can be removed now (a later start
                // removes it otherwise). Once per leftover, at start-up.
                let deadline = std::time::Instant::now() + Duration::from_millis(500);
                while cg.populated() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            cg.remove();
        }
    }
    if r.pid != r.pgid || r.pgid <= 1 {
        tracing::warn!(extension_id = %r.extension_id, pid = r.pid, pgid = r.pgid, "record does not name a process-group leader; left alone");
        return reaped;
    }
    match start_time(r.pid) {
        Some(t) if t == r.start_time => {
            if pgid_of(r.pid) != Some(r.pgid) {
                tracing::info!(extension_id = %r.extension_id, pid = r.pid, "recorded pid no longer leads its group; left alone");
            } else if !provenance.started_by_us(r.pid) {
                tracing::warn!(extension_id = %r.extension_id, pid = r.pid, "recorded process is not one of this daemon's hosts; left alone");
            } else {
                crate::spawn::signal_group(r.pgid, crate::spawn::StopSignal::Kill);
                reaped.push(format!("{} (group {})", r.extension_id, r.pgid));
            }
        }
        Some(_) => {
            tracing::info!(extension_id = %r.extension_id, pid = r.pid, "recorded pid now belongs to another process; left alone");
        }
        None => {
            let members: Vec<i32> = group_members_since(r.pgid, r.start_time)
                .into_iter()
                .filter(|pid| provenance.started_by_us(*pid))
                .collect();
            for pid in &members {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if !members.is_empty() {
                reaped.push(format!(
                    "{} ({} leftover processes of group {})",
                    r.extension_id,
                    members.len(),
                    r.pgid
                ));
            }
        }
    }
    reaped
}

/// The process group of `pid`, if it exists.
#[cfg(any(target_os = "linux", target_os = "macos"))]
fn pgid_of(pid: i32) -> Option<i32> {
    nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
        .ok()
        .map(|p| p.as_raw())
}

/// Live processes of group `pgid` that started no earlier than `since`.
#[cfg(target_os = "macos")]
fn group_members_since(pgid: i32, since: u64) -> Vec<i32> {
    let mut pids: Vec<libc::pid_t> = vec![0; 4096];
    let bytes = (pids.len() * std::mem::size_of::<libc::pid_t>()) as libc::c_int;
    // SAFETY: the pointer and byte size describe `pids`, which outlives the
    // call; it returns how many pids it wrote (or -1).
    let n = unsafe { libc::proc_listpgrppids(pgid, pids.as_mut_ptr().cast(), bytes) };
    pids.truncate(usize::try_from(n).unwrap_or(0).min(pids.len()));
    pids.retain(|&pid| pid > 0 && start_time(pid).is_some_and(|t| t >= since));
    pids
}

/// Live processes of group `pgid` that started no earlier than `since`.
#[cfg(target_os = "linux")]
fn group_members_since(pgid: i32, since: u64) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let in_group = crate::spawn::parse_stat_state_pgrp(&stat)
                .is_some_and(|(state, g)| g == pgid && state != 'Z' && state != 'X');
            in_group && start_time(*pid).is_some_and(|t| t >= since)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_start_time_is_readable_and_stable() {
        let me = std::process::id() as i32;
        let t = start_time(me).unwrap();
        assert_eq!(start_time(me), Some(t));
        assert_eq!(start_time(i32::MAX), None);
    }

    #[cfg(unix)]
    #[test]
    fn a_running_json_others_can_write_is_ignored_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("running.json");
        let text = r#"[{"extensionId":"x","pid":1,"pgid":1,"startTime":1}]"#;
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o622)).unwrap();
        assert!(reap_leftovers(&path, &Provenance::default()).is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[cfg(unix)]
    #[test]
    fn written_records_are_0600_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("running.json");
        // A temp file an older version left with the umask's mode.
        std::fs::write(path.with_extension("json.tmp"), "").unwrap();
        std::fs::set_permissions(
            path.with_extension("json.tmp"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        write_atomic(&path, &[]).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_recycled_pid_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("running.json");
        let me = std::process::id() as i32;
        let wrong = Record {
            extension_id: "x".into(),
            pid: me,
            pgid: me,
            start_time: start_time(me).unwrap() + 12345,
            cgroup: None,
        };
        write_atomic(&path, &[wrong]).unwrap();
        let recovered = reap_leftovers(&path, &Provenance::default());
        assert_eq!(recovered.len(), 1, "the record is reported");
        assert!(!recovered[0].reaped, "{recovered:?}");
        // Still alive to assert this; the file is emptied.
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), "[]");
    }
}
