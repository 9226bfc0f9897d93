//! What to run for one host: [`HostSpec`] and its policies, built from a
//! start's or a declaration's [`HostOptions`] by [`build_spec`] (where
//! milliseconds become `Duration`s and defaults apply), and the validation
//! of every field with its limits (`MAX_*`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SupervisorError;
use super::logs;
use super::settings::SupervisorConfig;
use crate::protocol::HostOptions;

/// When and how often a host that exits unexpectedly is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed before the host is left `crashed`.
    pub max_attempts: u32,
    /// Backoff before restart `n` (0-based) is `backoff · 2^n`…
    pub backoff: Duration,
    /// …capped at this.
    pub max_backoff: Duration,
    /// Continuous running time after which the budget is restored.
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    /// The seed's: 3 attempts, 1 s / 2 s / 4 s, reset after 5 s up.
    fn default() -> Self {
        RestartPolicy {
            max_attempts: 3,
            backoff: Duration::from_millis(1000),
            max_backoff: Duration::from_millis(30_000),
            stable_after: Duration::from_millis(5000),
        }
    }
}

impl RestartPolicy {
    /// The delay before restart number `attempt` (0-based).
    pub fn backoff_for(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.backoff
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max_backoff)
    }
}

/// What to run for one host: the *resolved* spec, every default applied
/// and every field checked, not an options bag (that is
/// [`HostOptions`], what a start or a declaration asks for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    pub entry: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    pub restart: RestartPolicy,
    pub stop_timeout: Duration,
    /// Readiness, heartbeat and framing settings of the host's IPC channel.
    pub ipc: IpcPolicy,
    /// This host's memory limit in bytes; `None` takes the daemon's
    /// `sandbox.memory_max_mb` (as it is when the host spawns).
    pub memory_max: Option<u64>,
    /// This host's CPU limit, percent of one CPU; `None` takes the daemon's
    /// `sandbox.cpu_max_percent`.
    pub cpu_max_percent: Option<u32>,
    /// What the host's extensions live in (canonical): the daemon answers
    /// `get-extensions-dir` with it.
    pub extensions_dir: Option<PathBuf>,
    /// Root of `get-extension-storage`'s directories; `None`: the host's
    /// private `<state>/hosts/<id>/storage`.
    pub storage_dir: Option<PathBuf>,
    /// Directories this host may write besides its own (sandbox).
    pub writable_paths: Vec<PathBuf>,
    /// Variables of the daemon's environment passed through by name.
    pub pass_env: Vec<String>,
    /// Payloads (compact JSON) the daemon answers host requests with, by
    /// type; on top of the daemon-wide `static_answers`.
    pub static_answers: BTreeMap<String, String>,
    /// This host's output limits (lines/s, bytes/s), each `None` taking
    /// the daemon's.
    pub log_rate_lines: Option<u64>,
    pub log_rate_bytes: Option<u64>,
}

impl HostSpec {
    /// Where `get-extension-storage` makes its directories, if anywhere.
    pub fn storage_root(&self, id: &str, config: &SupervisorConfig) -> Option<PathBuf> {
        self.storage_dir.clone().or_else(|| {
            config
                .state_dir
                .as_ref()
                .map(|s| s.join("hosts").join(id).join("storage"))
        })
    }

    /// The output rate its processes get: its own, else the daemon's.
    pub fn log_rate(&self, config: &SupervisorConfig) -> logs::LogRate {
        logs::LogRate {
            lines_per_sec: self.log_rate_lines.unwrap_or(config.log_rate.lines_per_sec),
            bytes_per_sec: self.log_rate_bytes.unwrap_or(config.log_rate.bytes_per_sec),
        }
    }

    /// The daemon's static answers with this host's on top.
    pub fn static_answers(&self, config: &SupervisorConfig) -> BTreeMap<String, String> {
        let mut all = config.static_answers.clone();
        all.extend(self.static_answers.clone());
        all
    }

    /// The memory limit its processes get: its own, or the daemon's default.
    pub fn memory_max(&self, config: &SupervisorConfig) -> Option<u64> {
        self.memory_max.or(config.memory_max)
    }

    /// The CPU limit its processes get: its own, or the daemon's default.
    pub fn cpu_max_percent(&self, config: &SupervisorConfig) -> Option<u32> {
        self.cpu_max_percent.or(config.cpu_max_percent)
    }
}

/// When a host must be ready and how its liveness is checked. Zero disables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpcPolicy {
    pub ready_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub max_frame: usize,
}

impl Default for IpcPolicy {
    fn default() -> Self {
        IpcPolicy {
            ready_timeout: Duration::from_millis(60_000),
            heartbeat_interval: Duration::from_millis(5_000),
            heartbeat_timeout: Duration::from_millis(15_000),
            max_frame: 50 * 1024 * 1024,
        }
    }
}

/// What a config declaration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// A new host, registered stopped.
    New,
    /// The host's spec for its next start is the declared one.
    Updated,
    /// An editor runs this host with its own spec: the declaration applies
    /// once it stops.
    Deferred,
}

/// The longest host id. Every path the daemon builds from an id must fit
/// `NAME_MAX` (255 bytes a component): the longest component is a host's
/// cgroup, `<daemon pid>.<id>.<generation>` (7 + 1 + id + 1 + 20 digits), so
/// an id may not pass 226 bytes; 128 leaves room. IPC socket paths use a
/// hash of the id, not the id, so they fit the 108-byte `sun_path` whatever
/// it is.
pub const MAX_ID_LEN: usize = 128;

/// Extension ids: `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`, no `..`.
pub fn validate_extension_id(id: &str) -> Result<(), SupervisorError> {
    let bad = |reason: &str| SupervisorError::InvalidSpec {
        field: "extensionId",
        reason: reason.into(),
    };
    let bytes = id.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_ID_LEN {
        return Err(bad("must be 1 to 128 characters"));
    }
    if !bytes[0].is_ascii_alphanumeric() {
        return Err(bad("must start with a letter or digit"));
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad("may contain only letters, digits, '.', '_' and '-'"));
    }
    if id.contains("..") {
        return Err(bad("must not contain '..'"));
    }
    Ok(())
}

fn validate_entry(entry: &Path) -> Result<(), SupervisorError> {
    let bad = |reason: String| SupervisorError::InvalidSpec {
        field: "entry",
        reason,
    };
    if !entry.is_absolute() {
        return Err(bad(format!(
            "must be an absolute path: {}",
            entry.display()
        )));
    }
    match std::fs::metadata(entry) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(bad(format!("not a regular file: {}", entry.display()))),
        Err(e) => Err(bad(format!("{}: {e}", entry.display()))),
    }
}

fn validate_env(env: &BTreeMap<String, String>) -> Result<(), SupervisorError> {
    for (k, v) in env {
        let reason = if k.is_empty() {
            Some("keys must not be empty".to_string())
        } else if k.contains('=') || k.contains('\0') {
            Some(format!("key {k:?} must not contain '=' or NUL"))
        } else if v.contains('\0') {
            Some(format!("value of {k:?} must not contain NUL"))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(SupervisorError::InvalidSpec {
                field: "env",
                reason,
            });
        }
    }
    Ok(())
}

/// The longest duration any host setting may take (a day): every deadline
/// the daemon computes from one stays far from `Instant`/`SystemTime`
/// overflow.
pub const MAX_SETTING_MS: u64 = 86_400_000;
/// The largest memory limit, MiB (16 TiB), and CPU limit, percent (1,000 CPUs).
pub const MAX_MEMORY_MB: u64 = 16 << 20;
pub const MAX_CPU_PERCENT: u32 = 100_000;
/// The largest output rate (lines or bytes a second) a host may be given.
pub const MAX_LOG_RATE: u64 = 1 << 40;

/// Every number of a start's options within its documented range.
fn check_ranges(req: &HostOptions, memory_max: Option<u64>) -> Result<(), SupervisorError> {
    let r = req.restart.clone().unwrap_or_default();
    let durations = [
        ("restart.backoffMs", r.backoff_ms),
        ("restart.maxBackoffMs", r.max_backoff_ms),
        ("restart.stableAfterMs", r.stable_after_ms),
        ("stopTimeoutMs", req.stop_timeout_ms),
        ("readyTimeoutMs", req.ready_timeout_ms),
        ("heartbeatIntervalMs", req.heartbeat_interval_ms),
        ("heartbeatTimeoutMs", req.heartbeat_timeout_ms),
    ];
    for (field, ms) in durations {
        if ms.is_some_and(|ms| ms > MAX_SETTING_MS) {
            return Err(SupervisorError::InvalidSpec {
                field,
                reason: format!("must be at most {MAX_SETTING_MS} (a day)"),
            });
        }
    }
    if memory_max.is_some_and(|b| b > MAX_MEMORY_MB << 20) {
        return Err(SupervisorError::InvalidSpec {
            field: "memoryMaxMb",
            reason: format!("must be at most {MAX_MEMORY_MB}"),
        });
    }
    for (field, v) in [
        ("logRateLines", req.log_rate_lines),
        ("logRateBytes", req.log_rate_bytes),
    ] {
        if v.is_some_and(|v| v > MAX_LOG_RATE) {
            return Err(SupervisorError::InvalidSpec {
                field,
                reason: format!("must be at most {MAX_LOG_RATE} (0: no limit)"),
            });
        }
    }
    if req.cpu_max_percent.is_some_and(|p| p > MAX_CPU_PERCENT) {
        return Err(SupervisorError::InvalidSpec {
            field: "cpuMaxPercent",
            reason: format!("must be at most {MAX_CPU_PERCENT}"),
        });
    }
    if let Some(a) = req
        .args
        .as_ref()
        .and_then(|a| a.iter().find(|a| a.contains('\0')))
    {
        return Err(SupervisorError::InvalidSpec {
            field: "args",
            reason: format!("{a:?} contains NUL"),
        });
    }
    Ok(())
}

/// An absolute path to an existing directory, canonicalized.
fn existing_dir(field: &'static str, dir: &Path) -> Result<PathBuf, SupervisorError> {
    let bad = |reason: String| SupervisorError::InvalidSpec { field, reason };
    if !dir.is_absolute() {
        return Err(bad(format!("must be an absolute path: {}", dir.display())));
    }
    match std::fs::canonicalize(dir) {
        Ok(c) if c.is_dir() => Ok(c),
        Ok(_) => Err(bad(format!("not a directory: {}", dir.display()))),
        Err(e) => Err(bad(format!("{}: {e}", dir.display()))),
    }
}

/// Most static answers one table may hold, and the longest payload.
pub const STATIC_ANSWERS_MAX: usize = 64;
pub const STATIC_ANSWER_MAX_BYTES: usize = 64 * 1024;

/// A static-answer table as compact JSON text by type, checked.
pub fn static_answers(
    answers: &BTreeMap<String, serde_json::Value>,
) -> Result<BTreeMap<String, String>, String> {
    if answers.len() > STATIC_ANSWERS_MAX {
        return Err(format!("at most {STATIC_ANSWERS_MAX} entries"));
    }
    answers
        .iter()
        .map(|(kind, v)| {
            if kind.is_empty() || kind.len() > 256 {
                return Err(format!("{kind:?}: a type is 1 to 256 characters"));
            }
            if kind == crate::ipc::READY || kind.ends_with("-response") || kind.ends_with("-error")
            {
                return Err(format!("{kind:?} cannot be answered statically"));
            }
            let text = serde_json::to_string(v).map_err(|e| e.to_string())?;
            if text.len() > STATIC_ANSWER_MAX_BYTES {
                return Err(format!(
                    "{kind:?}: payload over {STATIC_ANSWER_MAX_BYTES} bytes"
                ));
            }
            Ok((kind.clone(), text))
        })
        .collect()
}

/// The spec a host's options ask for: a new `entry` starts from the
/// config's defaults, an omitted one reuses `prev`; the other options
/// override. Milliseconds become `Duration`s here.
pub fn build_spec(
    config: &SupervisorConfig,
    req: &HostOptions,
    prev: Option<&HostSpec>,
) -> Result<HostSpec, SupervisorError> {
    {
        let ms = |v: Option<u64>| v.map(Duration::from_millis);
        let restart = req.restart.clone().unwrap_or_default();
        let memory_max = req.memory_max_mb.map(|mb| mb.saturating_mul(1 << 20));
        let base = match (&req.entry, prev) {
            (Some(entry), _) => HostSpec {
                entry: entry.clone(),
                args: Vec::new(),
                env: BTreeMap::new(),
                cwd: None,
                restart: config.restart,
                stop_timeout: config.stop_timeout,
                ipc: config.ipc,
                memory_max: None,
                cpu_max_percent: None,
                extensions_dir: None,
                storage_dir: None,
                writable_paths: Vec::new(),
                pass_env: Vec::new(),
                static_answers: BTreeMap::new(),
                log_rate_lines: None,
                log_rate_bytes: None,
            },
            (None, Some(prev)) => prev.clone(),
            (None, None) => {
                return Err(SupervisorError::InvalidSpec {
                    field: "entry",
                    reason: "required when starting a new host".into(),
                });
            }
        };
        let mut spec = base;
        if let Some(a) = &req.args {
            spec.args = a.clone();
        }
        if let Some(e) = &req.env {
            spec.env = e.clone();
        }
        if let Some(c) = &req.cwd {
            spec.cwd = Some(c.clone());
        }
        check_ranges(req, memory_max)?;
        let r = &mut spec.restart;
        r.max_attempts = restart.max_attempts.unwrap_or(r.max_attempts);
        r.backoff = ms(restart.backoff_ms).unwrap_or(r.backoff);
        r.max_backoff = ms(restart.max_backoff_ms).unwrap_or(r.max_backoff);
        r.stable_after = ms(restart.stable_after_ms).unwrap_or(r.stable_after);
        spec.stop_timeout = ms(req.stop_timeout_ms).unwrap_or(spec.stop_timeout);
        if let Some(bytes) = memory_max {
            if bytes < 1 << 20 {
                return Err(SupervisorError::InvalidSpec {
                    field: "memoryMaxMb",
                    reason: "must be at least 1".into(),
                });
            }
            spec.memory_max = Some(bytes);
        }
        if let Some(percent) = req.cpu_max_percent {
            if percent < 1 {
                return Err(SupervisorError::InvalidSpec {
                    field: "cpuMaxPercent",
                    reason: "must be at least 1".into(),
                });
            }
            spec.cpu_max_percent = Some(percent);
        }
        let i = &mut spec.ipc;
        i.ready_timeout = ms(req.ready_timeout_ms).unwrap_or(i.ready_timeout);
        i.heartbeat_interval = ms(req.heartbeat_interval_ms).unwrap_or(i.heartbeat_interval);
        i.heartbeat_timeout = ms(req.heartbeat_timeout_ms).unwrap_or(i.heartbeat_timeout);
        if let Some(d) = &req.extensions_dir {
            spec.extensions_dir = Some(existing_dir("extensionsDir", d)?);
        }
        if let Some(d) = &req.storage_dir {
            spec.storage_dir = Some(existing_dir("storageDir", d)?);
        }
        if let Some(paths) = &req.writable_paths {
            spec.writable_paths = paths
                .iter()
                .map(|p| existing_dir("writablePaths", p))
                .collect::<Result<_, _>>()?;
        }
        if let Some(names) = &req.pass_env {
            if let Some(bad) = names
                .iter()
                .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
            {
                return Err(SupervisorError::InvalidSpec {
                    field: "passEnv",
                    reason: format!("{bad:?} is not a variable name"),
                });
            }
            spec.pass_env = names.clone();
        }
        if req.log_rate_lines.is_some() {
            spec.log_rate_lines = req.log_rate_lines;
        }
        if req.log_rate_bytes.is_some() {
            spec.log_rate_bytes = req.log_rate_bytes;
        }
        if let Some(answers) = &req.static_answers {
            spec.static_answers =
                static_answers(answers).map_err(|reason| SupervisorError::InvalidSpec {
                    field: "staticAnswers",
                    reason,
                })?;
        }
        validate_entry(&spec.entry)?;
        validate_env(&spec.env)?;
        if let Some(cwd) = &spec.cwd
            && !cwd.is_dir()
        {
            return Err(SupervisorError::InvalidSpec {
                field: "cwd",
                reason: format!("not a directory: {}", cwd.display()),
            });
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_ids() {
        for ok in ["a", "ms-python.python", "A_b-9", &"x".repeat(MAX_ID_LEN)] {
            assert!(validate_extension_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".a",
            "-a",
            "a..b",
            "a/b",
            "a b",
            "é",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(validate_extension_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RestartPolicy {
            max_attempts: 10,
            backoff: Duration::from_millis(1000),
            max_backoff: Duration::from_millis(5000),
            stable_after: Duration::from_secs(5),
        };
        let got: Vec<u64> = (0..5)
            .map(|i| p.backoff_for(i).as_millis() as u64)
            .collect();
        assert_eq!(got, [1000, 2000, 4000, 5000, 5000]);
        assert_eq!(p.backoff_for(200), Duration::from_millis(5000));
    }

    #[test]
    fn env_keys_are_checked() {
        let mut env = BTreeMap::new();
        env.insert("A=B".to_string(), "x".to_string());
        assert!(matches!(
            validate_env(&env),
            Err(SupervisorError::InvalidSpec { field: "env", .. })
        ));
        env.clear();
        env.insert(String::new(), "x".into());
        assert!(validate_env(&env).is_err());
    }
}
