//! The supervisor: a registry of host actors and the event bus they publish to.
//!
//! Each host is owned by one tokio task ([`host`]) that holds its child
//! process, its state machine and its timers. Everything here talks to those
//! tasks through [`host::HostHandle`]s over bounded channels; status and list
//! are read from the bus, so they never wait behind a host that is stopping or
//! backing off.

pub mod answers;
pub mod budget;
pub mod events;
pub mod host;
pub mod logs;
pub mod messages;
pub mod peers;
pub mod records;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::spawn::SpawnError;
use crate::state::HostState;
use events::{EventBus, Filter, Subscription};
use host::HostHandle;
use logs::LogLine;

/// Errors of the supervisor domain. The RPC layer maps each to its code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SupervisorError {
    #[error("unknown extension host: {0}")]
    UnknownHost(String),
    #[error("invalid state transition: host {extension_id} is {state}")]
    InvalidTransition {
        extension_id: String,
        state: HostState,
    },
    #[error("spawn failed: {source}")]
    Spawn {
        extension_id: String,
        #[source]
        source: SpawnError,
    },
    #[error("{field}: {reason}")]
    InvalidSpec { field: &'static str, reason: String },
    #[error("daemon is shutting down")]
    ShuttingDown,
    #[error("host {extension_id} exited before it was ready ({reason})")]
    ExitedBeforeReady {
        extension_id: String,
        reason: String,
        last_exit: Option<LastExit>,
    },
    #[error("host {extension_id} was not ready within {ms} ms")]
    ReadyTimeout { extension_id: String, ms: u64 },
    #[error("{error}")]
    Relay {
        extension_id: String,
        error: crate::ipc::RelayError,
    },
    #[error("{0}")]
    Respond(#[from] messages::RespondError),
}

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

/// What to run for one host.
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

/// `host.start`'s request, before defaults are applied.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    pub extension_id: String,
    pub entry: Option<PathBuf>,
    pub args: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub cwd: Option<PathBuf>,
    pub max_attempts: Option<u32>,
    pub backoff: Option<Duration>,
    pub max_backoff: Option<Duration>,
    pub stable_after: Option<Duration>,
    pub stop_timeout: Option<Duration>,
    pub ready_timeout: Option<Duration>,
    pub heartbeat_interval: Option<Duration>,
    pub heartbeat_timeout: Option<Duration>,
    /// Memory limit in bytes (cgroup), overriding the daemon's default.
    pub memory_max: Option<u64>,
    /// CPU limit, percent of one CPU (cgroup), overriding the daemon's.
    pub cpu_max_percent: Option<u32>,
    pub extensions_dir: Option<PathBuf>,
    pub storage_dir: Option<PathBuf>,
    pub writable_paths: Option<Vec<PathBuf>>,
    pub pass_env: Option<Vec<String>>,
    pub static_answers: Option<BTreeMap<String, serde_json::Value>>,
    pub log_rate_lines: Option<u64>,
    pub log_rate_bytes: Option<u64>,
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

/// `host.usage`: a host's live resource use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostUsage {
    pub extension_id: String,
    pub state: HostState,
    pub pid: Option<u32>,
    /// `null` when no process runs.
    pub usage: Option<crate::spawn::GroupUsage>,
    /// What the host's IPC channels have seen over its life.
    pub ipc: crate::ipc::IpcCounts,
    /// Host requests waiting for an editor's answer now, and their bytes.
    pub waiting_requests: usize,
    pub waiting_request_bytes: usize,
}

/// The restart budget as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestartBudget {
    pub max_attempts: u32,
    pub attempts_left: u32,
}

/// How the last process of a host ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub at: String,
}

/// A host as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    pub extension_id: String,
    pub state: HostState,
    pub pid: Option<u32>,
    pub generation: u64,
    pub restart_count: u64,
    pub restart_budget: RestartBudget,
    pub next_restart_at: Option<String>,
    pub started_at: Option<String>,
    pub uptime_ms: Option<u64>,
    pub last_exit: Option<LastExit>,
    pub entry: String,
    pub node: Option<String>,
    /// The host completed the IPC handshake; requests can be relayed.
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub ready_at: Option<String>,
    /// The memory limit the host's next (or current) process gets, in MiB,
    /// if any: its own or the daemon's default.
    #[serde(default)]
    pub memory_max_mb: Option<u64>,
    /// The CPU limit (percent of one CPU) its processes get, if any.
    #[serde(default)]
    pub cpu_max_percent: Option<u32>,
    /// When the current process started, for `uptime_ms`.
    #[serde(skip)]
    pub started_instant: Option<Instant>,
}

impl HostStatus {
    /// A copy with `uptime_ms` computed for now.
    pub fn with_uptime(&self) -> HostStatus {
        let mut s = self.clone();
        s.uptime_ms = s.started_instant.map(|t| crate::time::millis(t.elapsed()));
        s
    }
}

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

/// Settings that apply to every host, from the config.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// `node` from the config: overrides the search.
    pub node: Option<PathBuf>,
    /// Whether and against what the Node binary is verified.
    pub node_policy: crate::verify::NodePolicy,
    /// Options for Node itself, before the entry (`--max-old-space-size=N`).
    pub node_args: Vec<String>,
    /// Where per-host cgroups are made.
    pub cgroups: CgroupRoots,
    /// `sandbox.memory_max_mb`, in bytes, applied to each host's cgroup.
    pub memory_max: Option<u64>,
    /// `sandbox.cpu_max_percent`, applied to each host's cgroup.
    pub cpu_max_percent: Option<u32>,
    /// The sandbox profile; each host also gets its private dirs writable.
    #[cfg(target_os = "linux")]
    pub sandbox: crate::sandbox::SandboxPolicy,
    /// Directory of the daemon executable, for bundled Node.
    pub exe_dir: Option<PathBuf>,
    /// `DSCODE_RESOURCE_PATH` as the seed computed it.
    pub resource_path: Option<PathBuf>,
    /// Where per-host IPC sockets live (the socket's directory).
    pub runtime_dir: PathBuf,
    /// The part of the daemon's environment hosts may inherit: already
    /// filtered through [`allowed_env`].
    pub base_env: BTreeMap<OsString, OsString>,
    /// Where each host's private storage and TMPDIR live
    /// (`<state>/hosts/<id>/`); `None` leaves TMPDIR alone.
    pub state_dir: Option<PathBuf>,
    pub restart: RestartPolicy,
    pub stop_timeout: Duration,
    pub ipc: IpcPolicy,
    pub log_lines: usize,
    pub log_line_bytes: usize,
    /// Deadline and per-host bounds of host-originated requests.
    pub host_requests: messages::HubLimits,
    /// Daemon-wide static answers (compact JSON by message type).
    pub static_answers: BTreeMap<String, String>,
    /// The user hosts run as (`[sandbox] run_as`, root daemons).
    pub run_as: Option<crate::spawn::HostUser>,
    /// Each host's output limit unless it sets its own.
    pub log_rate: logs::LogRate,
}

impl SupervisorConfig {
    /// Defaults suitable for tests: inherit this process's environment.
    pub fn new(runtime_dir: PathBuf) -> Self {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let resource_path = std::env::var_os("DSCODE_RESOURCE_PATH")
            .map(PathBuf::from)
            .or_else(|| {
                exe_dir
                    .as_ref()
                    .map(|d| d.join("resources"))
                    .filter(|p| p.is_dir())
            });
        SupervisorConfig {
            node: None,
            node_policy: crate::verify::NodePolicy::default(),
            node_args: Vec::new(),
            cgroups: CgroupRoots::default(),
            memory_max: None,
            cpu_max_percent: None,
            #[cfg(target_os = "linux")]
            sandbox: crate::sandbox::SandboxPolicy::default(),
            exe_dir,
            resource_path,
            runtime_dir,
            base_env: allowed_env(std::env::vars_os(), &[]),
            state_dir: None,
            restart: RestartPolicy::default(),
            stop_timeout: Duration::from_millis(5000),
            ipc: IpcPolicy::default(),
            log_lines: 1000,
            log_line_bytes: 16 * 1024,
            host_requests: messages::HubLimits::default(),
            static_answers: BTreeMap::new(),
            run_as: None,
            log_rate: logs::LogRate::default(),
        }
    }
}

/// The daemon's variables a host may inherit: an allowlist, not the daemon's
/// whole environment. `PATH`, `HOME`, `USER`, `LANG`, `LC_*`, `TZ`, `DSCODE_*`
/// and the names in `passthrough`. `NODE_OPTIONS` (`--require` injects code),
/// `NODE_EXTRA_CA_CERTS` and `LD_*` never pass implicitly: only by name in
/// `passthrough` or in a start request's `env`.
pub fn allowed_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    passthrough: &[String],
) -> BTreeMap<OsString, OsString> {
    vars.into_iter()
        .filter(|(k, _)| {
            let Some(k) = k.to_str() else { return false };
            passthrough.iter().any(|p| p == k)
                || matches!(k, "PATH" | "HOME" | "USER" | "LANG" | "TZ")
                || k.starts_with("LC_")
                || (k.starts_with("DSCODE_") && k != "DSCODE_HOSTD_SOCKET")
        })
        .collect()
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

/// Every number of a start request within its documented range.
fn check_ranges(req: &StartRequest) -> Result<(), SupervisorError> {
    let durations = [
        ("restart.backoffMs", req.backoff),
        ("restart.maxBackoffMs", req.max_backoff),
        ("restart.stableAfterMs", req.stable_after),
        ("stopTimeoutMs", req.stop_timeout),
        ("readyTimeoutMs", req.ready_timeout),
        ("heartbeatIntervalMs", req.heartbeat_interval),
        ("heartbeatTimeoutMs", req.heartbeat_timeout),
    ];
    for (field, d) in durations {
        if d.is_some_and(|d| d > Duration::from_millis(MAX_SETTING_MS)) {
            return Err(SupervisorError::InvalidSpec {
                field,
                reason: format!("must be at most {MAX_SETTING_MS} (a day)"),
            });
        }
    }
    if req.memory_max.is_some_and(|b| b > MAX_MEMORY_MB << 20) {
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

/// See the module documentation.
pub struct Supervisor {
    config: watch::Sender<Arc<SupervisorConfig>>,
    /// Started with the first host (it needs the runtime).
    spawner: std::sync::OnceLock<Arc<crate::spawn::Spawner>>,
    /// `running.json`, started with the first host; `None` without a state dir.
    records: std::sync::OnceLock<Option<Arc<records::Records>>>,
    messages: Arc<messages::MessageHub>,
    bus: Arc<EventBus>,
    registry: Arc<Registry>,
    shutting_down: AtomicBool,
    force_kill: watch::Sender<bool>,
}

/// The map of live host actors, shared with the actors so a removed host can
/// take itself out.
#[derive(Default)]
pub struct Registry {
    hosts: Mutex<HashMap<String, HostHandle>>,
    next_instance: AtomicU64,
}

impl Registry {
    fn get(&self, id: &str) -> Option<HostHandle> {
        self.hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Remove `id` if it is still the actor `instance`.
    pub fn remove_instance(&self, id: &str, instance: u64) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if hosts.get(id).is_some_and(|h| h.instance == instance) {
            hosts.remove(id);
        }
    }

    fn all(&self) -> Vec<HostHandle> {
        self.hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

impl Supervisor {
    pub fn new(config: SupervisorConfig) -> Arc<Self> {
        let (force_kill, _) = watch::channel(false);
        let hub_limits = config.host_requests;
        Arc::new(Supervisor {
            config: watch::Sender::new(Arc::new(config)),
            spawner: std::sync::OnceLock::new(),
            records: std::sync::OnceLock::new(),
            messages: messages::MessageHub::new(hub_limits),
            bus: Arc::new(EventBus::new()),
            registry: Arc::new(Registry::default()),
            shutting_down: AtomicBool::new(false),
            force_kill,
        })
    }

    /// The current settings.
    pub fn config(&self) -> Arc<SupervisorConfig> {
        self.config.borrow().clone()
    }

    /// New settings for every later start (a config reload). Running hosts
    /// are not touched.
    pub fn reconfigure(&self, config: SupervisorConfig) {
        self.messages.set_limits(config.host_requests);
        self.config.send_replace(Arc::new(config));
    }

    /// Declare a host from the config: register it (stopped) if new, or
    /// replace the spec its next start uses, unless an editor runs it with
    /// its own spec: then the declaration waits until that host stops.
    pub async fn declare(&self, req: StartRequest) -> Result<Declared, SupervisorError> {
        self.check_running()?;
        validate_extension_id(&req.extension_id)?;
        let spec = build_spec(&self.config(), &req, None)?;
        if let Some(h) = self.registry.get(&req.extension_id) {
            let id = req.extension_id.clone();
            return match h.declare(req).await {
                Some(r) => r,
                None => Err(SupervisorError::UnknownHost(id)),
            };
        }
        self.register(&req.extension_id, spec);
        Ok(Declared::New)
    }

    fn check_running(&self) -> Result<(), SupervisorError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            Err(SupervisorError::ShuttingDown)
        } else {
            Ok(())
        }
    }
}

/// The spec a start request asks for: a new `entry` starts from the config's
/// defaults, an omitted one reuses `prev`; the request's other fields override.
pub fn build_spec(
    config: &SupervisorConfig,
    req: &StartRequest,
    prev: Option<&HostSpec>,
) -> Result<HostSpec, SupervisorError> {
    {
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
        check_ranges(req)?;
        let r = &mut spec.restart;
        r.max_attempts = req.max_attempts.unwrap_or(r.max_attempts);
        r.backoff = req.backoff.unwrap_or(r.backoff);
        r.max_backoff = req.max_backoff.unwrap_or(r.max_backoff);
        r.stable_after = req.stable_after.unwrap_or(r.stable_after);
        spec.stop_timeout = req.stop_timeout.unwrap_or(spec.stop_timeout);
        if let Some(bytes) = req.memory_max {
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
        i.ready_timeout = req.ready_timeout.unwrap_or(i.ready_timeout);
        i.heartbeat_interval = req.heartbeat_interval.unwrap_or(i.heartbeat_interval);
        i.heartbeat_timeout = req.heartbeat_timeout.unwrap_or(i.heartbeat_timeout);
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

impl Supervisor {
    /// Start a host and, with `wait_ready`, wait until it has completed the
    /// IPC handshake: `ExitedBeforeReady` if it exits (or is judged failed)
    /// first, `ReadyTimeout` if its ready timeout passes.
    pub async fn start_and_wait(
        &self,
        req: StartRequest,
        wait_ready: bool,
    ) -> Result<HostStatus, SupervisorError> {
        if !wait_ready {
            return self.start(req).await;
        }
        let id = req.extension_id.clone();
        let filter: Filter = Some([id.clone()].into_iter().collect());
        let mut events = self.bus.subscribe(&filter).events;
        let started = self.start(req).await?;
        let generation = started.generation;
        loop {
            let ev = match events.recv().await {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let now = self.status(&id)?;
                    if now.ready && now.generation == generation {
                        return Ok(now);
                    }
                    continue;
                }
                Err(_) => return Err(SupervisorError::ShuttingDown),
            };
            if ev.extension_id != id {
                continue;
            }
            let Ok(e) = serde_json::from_str::<events::StateEvent>(ev.json.get()) else {
                continue;
            };
            if e.generation != Some(generation) {
                continue;
            }
            match (e.kind, e.from, e.status) {
                (events::EventKind::Ready, _, Some(s)) => return Ok(s.with_uptime()),
                (events::EventKind::Transition, Some(HostState::Running), status) => {
                    let ms = e
                        .reason
                        .strip_prefix("not ready within ")
                        .and_then(|r| r.strip_suffix(" ms"));
                    if let Some(ms) = ms.and_then(|m| m.parse().ok()) {
                        return Err(SupervisorError::ReadyTimeout {
                            extension_id: id,
                            ms,
                        });
                    }
                    return Err(SupervisorError::ExitedBeforeReady {
                        extension_id: id,
                        reason: e.reason,
                        last_exit: status.and_then(|s| s.last_exit),
                    });
                }
                _ => {}
            }
        }
    }

    /// Register (if new) and start a host. Returns once it is spawned.
    pub async fn start(&self, req: StartRequest) -> Result<HostStatus, SupervisorError> {
        self.check_running()?;
        validate_extension_id(&req.extension_id)?;
        // A host removed between lookup and send is simply registered anew.
        for _ in 0..3 {
            let handle = match self.registry.get(&req.extension_id) {
                Some(h) => h,
                None => {
                    let spec = build_spec(&self.config(), &req, None)?;
                    self.register(&req.extension_id, spec.clone())
                }
            };
            match handle.start(req.clone()).await {
                Some(r) => return r,
                None => continue,
            }
        }
        Err(SupervisorError::UnknownHost(req.extension_id))
    }

    fn register(&self, id: &str, spec: HostSpec) -> HostHandle {
        let mut hosts = self
            .registry
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(h) = hosts.get(id) {
            return h.clone();
        }
        let instance = self.registry.next_instance.fetch_add(1, Ordering::Relaxed);
        let handle = host::spawn_actor(host::ActorParts {
            id: id.into(),
            instance,
            spec,
            config: self.config.subscribe(),
            bus: self.bus.clone(),
            registry: Arc::downgrade(&self.registry),
            force_kill: self.force_kill.subscribe(),
            messages: self.messages.clone(),
            spawner: self
                .spawner
                .get_or_init(|| {
                    crate::spawn::Spawner::start().expect("cannot start the spawner thread")
                })
                .clone(),
            records: self
                .records
                .get_or_init(|| {
                    let dir = self.config().state_dir.clone()?;
                    Some(records::Records::start(dir.join("running.json")))
                })
                .clone(),
        });
        hosts.insert(id.to_string(), handle.clone());
        handle
    }

    fn handle(&self, id: &str) -> Result<HostHandle, SupervisorError> {
        self.registry
            .get(id)
            .ok_or_else(|| SupervisorError::UnknownHost(id.to_string()))
    }

    /// Stop a host: SIGTERM to its group, SIGKILL after the timeout. Returns
    /// once the group is empty.
    pub async fn stop(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<HostStatus, SupervisorError> {
        self.check_running()?;
        self.handle(id)?
            .stop(timeout)
            .await
            .ok_or_else(|| SupervisorError::UnknownHost(id.into()))?
    }

    /// Stop if running, then start again with a fresh restart budget.
    pub async fn restart(&self, id: &str) -> Result<HostStatus, SupervisorError> {
        self.check_running()?;
        self.handle(id)?
            .restart()
            .await
            .ok_or_else(|| SupervisorError::UnknownHost(id.into()))?
    }

    /// Forget a `stopped` or `crashed` host.
    pub async fn remove(&self, id: &str) -> Result<(), SupervisorError> {
        self.check_running()?;
        self.handle(id)?
            .remove()
            .await
            .ok_or_else(|| SupervisorError::UnknownHost(id.into()))?
    }

    pub fn status(&self, id: &str) -> Result<HostStatus, SupervisorError> {
        self.bus
            .status(id)
            .ok_or_else(|| SupervisorError::UnknownHost(id.to_string()))
    }

    pub fn list(&self) -> Vec<HostStatus> {
        self.bus.list()
    }

    /// What a host's processes use now, asked of its actor (the owner of
    /// its process group).
    pub async fn usage(&self, id: &str) -> Result<HostUsage, SupervisorError> {
        let usage = self
            .handle(id)?
            .usage()
            .await
            .ok_or_else(|| SupervisorError::UnknownHost(id.into()))??;
        let handle = self.handle(id)?;
        let status = self.status(id)?;
        let (waiting_requests, waiting_request_bytes) = self.messages.load(id);
        Ok(HostUsage {
            extension_id: status.extension_id,
            state: status.state,
            pid: status.pid,
            usage,
            ipc: handle.ipc_counts(),
            waiting_requests,
            waiting_request_bytes,
        })
    }

    /// The newest `n` output lines of a host.
    pub fn logs(&self, id: &str, n: usize) -> Result<Vec<LogLine>, SupervisorError> {
        Ok(self.handle(id)?.logs(n))
    }

    /// The newest `n` output lines of a host, then every new one.
    pub fn follow_logs(&self, id: &str, n: usize) -> Result<logs::Follow, SupervisorError> {
        Ok(self.handle(id)?.follow_logs(n))
    }

    pub fn subscribe(&self, filter: &Filter) -> Subscription {
        self.bus.subscribe(filter)
    }

    /// Relay a request to a ready host; the payload of its `-response`.
    pub async fn request(
        &self,
        id: &str,
        kind: &str,
        payload: Box<serde_json::value::RawValue>,
        timeout: Duration,
        partial: Option<crate::ipc::PartialSink>,
    ) -> Result<Box<serde_json::value::RawValue>, SupervisorError> {
        let session = self.handle(id)?.session();
        let relay = |error| SupervisorError::Relay {
            extension_id: id.to_string(),
            error,
        };
        let session = session.ok_or_else(|| relay(crate::ipc::RelayError::NotReady))?;
        session
            .request(kind, payload, timeout, partial)
            .await
            .map_err(relay)
    }

    /// Send a one-way message to a ready host.
    pub async fn send(
        &self,
        id: &str,
        kind: &str,
        payload: Box<serde_json::value::RawValue>,
    ) -> Result<(), SupervisorError> {
        let relay = |error| SupervisorError::Relay {
            extension_id: id.to_string(),
            error,
        };
        let session = self
            .handle(id)?
            .session()
            .ok_or_else(|| relay(crate::ipc::RelayError::NotReady))?;
        session
            .send(kind, payload, Duration::from_secs(30))
            .await
            .map_err(relay)
    }

    /// Attach an editor to host-originated requests.
    pub fn subscribe_messages(&self, filter: Filter) -> messages::Attachment {
        self.messages.attach(filter)
    }

    /// An editor's answer to a host-originated request.
    pub async fn respond(
        &self,
        id: &str,
        request_id: &serde_json::value::RawValue,
        result: Result<Box<serde_json::value::RawValue>, String>,
    ) -> Result<(), SupervisorError> {
        Ok(self.messages.respond(id, request_id, result).await?)
    }

    /// Who the hosts are, to judge a control-socket peer by (see
    /// [`peers`]): the leader pid of every host process now running.
    pub fn host_peers(&self) -> peers::HostPeers {
        peers::HostPeers::new(
            self.bus
                .list()
                .into_iter()
                .filter_map(|s| Some((i32::try_from(s.pid?).ok()?, s.extension_id))),
        )
    }

    /// The last event sequence number assigned.
    pub fn current_seq(&self) -> u64 {
        self.bus.seq()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Refuse new work and stop every host concurrently, each with its own
    /// stop timeout, all within `deadline`. Whatever is left then is killed.
    pub async fn shutdown(&self, deadline: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let hosts = self.registry.all();
        let mut set = tokio::task::JoinSet::new();
        for h in hosts {
            set.spawn(async move { h.stop(None).await });
        }
        let all = async { while set.join_next().await.is_some() {} };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!("shutdown deadline passed; killing the remaining hosts");
            self.kill_all_now();
            let rest = async { while set.join_next().await.is_some() {} };
            if tokio::time::timeout(Duration::from_secs(5), rest)
                .await
                .is_err()
            {
                tracing::error!("some hosts did not exit after SIGKILL");
            }
        }
    }

    /// SIGKILL every host's process group at once (a second SIGINT).
    pub fn kill_all_now(&self) {
        self.force_kill.send_replace(true);
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
    fn only_allowlisted_variables_are_inherited() {
        let vars = [
            ("PATH", "/bin"),
            ("HOME", "/home/u"),
            ("LC_ALL", "C"),
            ("NODE_OPTIONS", "--require /tmp/evil.js"),
            ("NODE_EXTRA_CA_CERTS", "/x"),
            ("LD_PRELOAD", "/x.so"),
            ("AWS_SECRET_ACCESS_KEY", "k"),
            ("DSCODE_RESOURCE_PATH", "/r"),
            ("DSCODE_HOSTD_SOCKET", "/s"),
            ("HTTPS_PROXY", "p"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = allowed_env(vars.clone(), &[]);
        let keys: Vec<_> = env.keys().map(|k| k.to_str().unwrap()).collect();
        assert_eq!(keys, ["DSCODE_RESOURCE_PATH", "HOME", "LC_ALL", "PATH"]);
        let env = allowed_env(vars, &["HTTPS_PROXY".into()]);
        assert!(env.contains_key(std::ffi::OsStr::new("HTTPS_PROXY")));
    }

    /// The next transition of the subscribed host.
    #[cfg(target_os = "linux")]
    async fn next_transition(
        rx: &mut tokio::sync::broadcast::Receiver<Arc<events::BusEvent>>,
    ) -> events::StateEvent {
        loop {
            let ev = rx.recv().await.expect("bus open");
            let e: events::StateEvent = serde_json::from_str(ev.json.get()).unwrap();
            if e.kind == events::EventKind::Transition {
                return e;
            }
        }
    }

    /// Paused time, deterministic: a host's process exits while the daemon
    /// cannot run (as after SIGSTOP), then its stable time passes; when the
    /// actor wakes, the timer and the exit are both due. The exit must win:
    /// the budget of a process that is gone is never restored.
    #[cfg(target_os = "linux")]
    #[tokio::test(start_paused = true)]
    async fn an_exit_due_with_the_stable_timer_wins() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path().join("exit3.sh");
        std::fs::write(&entry, "exit 3\n").unwrap();
        let mut config = SupervisorConfig::new(dir.path().join("run"));
        config.node = Some("/bin/sh".into());
        config.ipc.ready_timeout = Duration::ZERO;
        config.ipc.heartbeat_interval = Duration::ZERO;
        let sup = Supervisor::new(config);
        let filter: Filter = Some(["t.race".to_string()].into_iter().collect());
        let mut rx = sup.subscribe(&filter).events;
        sup.start(StartRequest {
            extension_id: "t.race".into(),
            entry: Some(entry),
            max_attempts: Some(5),
            backoff: Some(Duration::ZERO),
            stable_after: Some(Duration::from_secs(10)),
            ..Default::default()
        })
        .await
        .unwrap();
        // Generation 1 exits: one attempt used, restarted at once.
        loop {
            let e = next_transition(&mut rx).await;
            if e.to == Some(HostState::Running) && e.generation == Some(2) {
                break;
            }
        }
        // Generation 2 is spawned. Keep the runtime from running (or
        // auto-advancing time) while it exits, then pass its stable time.
        std::thread::sleep(std::time::Duration::from_millis(300));
        tokio::time::advance(Duration::from_secs(11)).await;
        // running → unhealthy (the exit), then the restart decision.
        let e = loop {
            let e = next_transition(&mut rx).await;
            if e.to == Some(HostState::Restarting) {
                break e;
            }
        };
        assert!(
            e.reason.ends_with("(attempt 2 of 5)"),
            "the budget was restored for a process that had exited: {}",
            e.reason
        );
        sup.shutdown(Duration::from_secs(5)).await;
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
