//! The daemon's composition root: config, logging, socket (bound or
//! inherited from systemd), instance lock, supervisor, RPC server, signals,
//! `sd_notify`, reload and graceful shutdown. The `dscode-hostd` binary is a
//! thin wrapper around [`load_config`], [`init_logging`] and [`run`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use interprocess::local_socket::{ListenerOptions, tokio::Listener};
use tokio::sync::{mpsc, watch};

use crate::config::{self, Config, LogFormat};
use crate::paths;
use crate::rpc::{
    self, Control, DaemonInfo, DaemonState, RpcContext, server::ServerLimits, transport::Limits,
};
use crate::supervisor::{CgroupRoots, Supervisor, SupervisorConfig};

/// Overall bound on stopping every host at shutdown.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Variables that concern the daemon itself and must not reach hosts.
const DAEMON_ONLY_ENV: &[&str] = &[
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "DSCODE_HOSTD_SOCKET",
];

/// Command-line options of `dscode-hostd`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

/// The config file in use: `--config` (must exist) or the default path (may
/// be missing, which means defaults).
pub fn config_source(opts: &Options) -> Option<(PathBuf, bool)> {
    match &opts.config {
        Some(p) => Some((p.clone(), true)),
        None => config::default_config_path().map(|p| (p, false)),
    }
}

/// Why the config could not be loaded: the file itself, or who may write it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Unsafe(#[from] paths::PathError),
}

/// Load the config (at start-up and at every reload). A file that exists is
/// first checked to be owned by this user (or root) and not writable by
/// group or others, its directory likewise: whoever can write it chooses
/// what the daemon runs.
pub fn load_config(opts: &Options) -> Result<Config, LoadError> {
    match config_source(opts) {
        Some((p, required)) => {
            // A missing file is the loader's to report (or to default).
            #[cfg(unix)]
            if p.exists() {
                paths::check_config_file(&p)?;
            }
            Ok(Config::load(&p, required)?)
        }
        None => Ok(Config::default()),
    }
}

/// Keep this alive for as long as logs should reach the file.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// What [`init_logging`] set up.
pub struct Logging {
    /// Flushes the file on drop.
    pub guard: LogGuard,
    /// The log directory.
    pub dir: PathBuf,
    /// Asks the file writer to reopen its file (SIGUSR1).
    pub reopen: LogReopen,
}

/// A handle that makes the log file writer reopen its file before its next
/// write: after `logrotate` (or a person) renamed or removed it, logging
/// goes on in a new file of the same name.
#[derive(Debug, Clone, Default)]
pub struct LogReopen(Arc<AtomicBool>);

impl LogReopen {
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Log to stderr (the journal under systemd) and to a daily file in
/// `log_dir` (default: the state directory), keeping `log_max_files`. The
/// directory is 0700 and the files 0600, whatever the umask.
pub fn init_logging(config: &Config, opts: &Options) -> anyhow::Result<Logging> {
    use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let dir = config
        .log_dir
        .clone()
        .unwrap_or_else(|| paths::resolve_state_dir(opts.state_dir.as_deref()));
    #[cfg(unix)]
    let what = if config.log_dir.is_some() {
        "log directory"
    } else {
        "state directory"
    };
    #[cfg(unix)]
    let tightened = paths::make_private_dir(&dir, what)?;
    #[cfg(not(unix))]
    let tightened = {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating log dir {}", dir.display()))?;
        false
    };
    let reopen = LogReopen::default();
    let mut log_file = LogFile {
        dir: dir.clone(),
        max_files: config.log_max_files,
        max_bytes: config.log_max_bytes,
        written: 0,
        current: None,
        reopen: reopen.clone(),
    };
    log_file
        .open()
        .with_context(|| format!("opening a log file in {}", dir.display()))?;
    let (file, guard) = tracing_appender::non_blocking(log_file);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (stderr_layer, file_layer) = match config.log_format {
        LogFormat::Text => (
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .boxed(),
            tracing_subscriber::fmt::layer()
                .with_writer(file)
                .with_ansi(false)
                .boxed(),
        ),
        LogFormat::Json => (
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .boxed(),
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(file)
                .boxed(),
        ),
    };
    // Host output (target "host") goes where `host_output` says, once.
    use crate::config::HostOutput;
    use tracing_subscriber::filter::{FilterExt, filter_fn};
    let to_stderr = matches!(config.host_output, HostOutput::Stderr | HostOutput::Both);
    let to_file = matches!(config.host_output, HostOutput::File | HostOutput::Both);
    tracing_subscriber::registry()
        .with(
            stderr_layer
                .with_filter(filter().and(filter_fn(move |m| to_stderr || m.target() != "host"))),
        )
        .with(
            file_layer
                .with_filter(filter().and(filter_fn(move |m| to_file || m.target() != "host"))),
        )
        .try_init()
        .context("installing the tracing subscriber")?;
    if tightened {
        tracing::warn!(dir = %dir.display(), "the log directory was open to group or others: made it 0700 (its files are 0600)");
    }
    Ok(Logging { guard, dir, reopen })
}

const LOG_PREFIX: &str = "dscode-hostd.";
const LOG_SUFFIX: &str = ".log";

/// The daily log file `<dir>/dscode-hostd.YYYY-MM-DD.log` (UTC dates, as
/// tracing-appender named them before): created 0600 whatever the umask,
/// at most `max_files` kept (0: all), a new one each day, and reopened when
/// [`LogReopen`] asks. tracing-appender's own rolling writer can neither set
/// a mode nor reopen.
struct LogFile {
    dir: PathBuf,
    max_files: usize,
    /// Past this many bytes the file is renamed aside and a new one begun.
    max_bytes: u64,
    /// Bytes in the open file.
    written: u64,
    /// The date and the open file.
    current: Option<(String, std::fs::File)>,
    reopen: LogReopen,
}

impl LogFile {
    fn today() -> String {
        let mut d = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        d.truncate(10);
        d
    }

    fn open(&mut self) -> std::io::Result<()> {
        let date = Self::today();
        let name = format!("{LOG_PREFIX}{date}{LOG_SUFFIX}");
        self.prune(&name);
        let mut options = std::fs::OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
        }
        let file = options.open(self.dir.join(&name))?;
        // A file an older version created keeps its mode: set it.
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        self.written = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.current = Some((date, file));
        Ok(())
    }

    /// The open file is full: rename it aside (a name that sorts after the
    /// day's earlier files and before its current one) and begin a new one.
    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some((date, f)) = self.current.take() {
            drop(f);
            let nanos = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let from = self.dir.join(format!("{LOG_PREFIX}{date}{LOG_SUFFIX}"));
            let to = self
                .dir
                .join(format!("{LOG_PREFIX}{date}.{nanos:020}{LOG_SUFFIX}"));
            // If it cannot be renamed, the same file goes on (over its size).
            let _ = std::fs::rename(from, to);
        }
        self.open()
    }

    /// Delete the oldest log files so that, with `keep` about to be opened,
    /// at most `max_files` remain; make the others 0600.
    fn prune(&self, keep: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut old: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(LOG_PREFIX) && n.ends_with(LOG_SUFFIX) && n != keep)
            .collect();
        old.sort();
        let excess = if self.max_files == 0 {
            0
        } else {
            old.len().saturating_sub(self.max_files - 1)
        };
        for n in &old[..excess] {
            let _ = std::fs::remove_file(self.dir.join(n));
        }
        // Files an older version wrote with the umask's mode.
        #[cfg(unix)]
        for n in &old[excess..] {
            use std::os::unix::fs::PermissionsExt;
            let p = self.dir.join(n);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
            }
        }
    }
}

impl std::io::Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let stale = match &self.current {
            Some((date, _)) => *date != Self::today(),
            None => true,
        };
        if self.reopen.0.swap(false, Ordering::SeqCst) || stale {
            if let Some((_, f)) = &mut self.current {
                let _ = f.flush();
            }
            if let Err(e) = self.open() {
                if self.current.is_none() {
                    return Err(e);
                }
                // Out of descriptors, say: keep the old file, and try
                // again at the next line.
                self.reopen.request();
            }
        }
        if self.max_bytes > 0
            && self.written > 0
            && self.written + buf.len() as u64 > self.max_bytes
            && let Err(e) = self.rotate()
            && self.current.is_none()
        {
            return Err(e);
        }
        match &mut self.current {
            Some((_, f)) => {
                let n = f.write(buf)?;
                self.written += n as u64;
                Ok(n)
            }
            None => Err(std::io::Error::other("no log file")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.current {
            Some((_, f)) => f.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(unix)]
fn bind(socket: &Path) -> anyhow::Result<Listener> {
    use interprocess::local_socket::{GenericFilePath, ToFsName};
    use interprocess::os::unix::local_socket::ListenerOptionsExt;
    // We hold the instance lock, so an existing socket is a dead daemon's,
    // unless something without the lock answers on it. Anything that is not
    // a socket (a user's file named by mistake) is never removed.
    if paths::existing_socket(socket)? {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            anyhow::bail!(
                "another process is serving socket {}; stop it first, or pass a different --socket",
                socket.display()
            );
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing stale socket {}", socket.display()))?;
        tracing::info!(socket = %socket.display(), "reclaimed a stale socket");
    }
    let name = socket
        .to_fs_name::<GenericFilePath>()
        .with_context(|| format!("socket name {}", socket.display()))?;
    ListenerOptions::new()
        .name(name)
        .mode(0o600)
        .create_tokio()
        .with_context(|| format!("binding {}", socket.display()))
}

#[cfg(windows)]
fn bind(socket: &Path) -> anyhow::Result<Listener> {
    use interprocess::local_socket::{GenericNamespaced, ToNsName};
    let name = socket
        .file_name()
        .and_then(|n| n.to_str())
        .context("pipe name")?
        .to_ns_name::<GenericNamespaced>()?;
    ListenerOptions::new()
        .name(name)
        .create_tokio()
        .with_context(|| format!("creating pipe {}", socket.display()))
}

/// Why a descriptor passed by the service manager cannot be the control
/// socket.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("fd {fd} passed by the service manager (LISTEN_FDS) is not a socket")]
    NotASocket {
        fd: i32,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "fd {fd} passed by the service manager (LISTEN_FDS) is an {what}; dscode-hostd needs \
         a listening AF_UNIX SOCK_STREAM socket (ListenStream=/path/to/hostd.sock in the \
         .socket unit, not ListenDatagram= or a TCP port)"
    )]
    Unsuitable { fd: i32, what: String },
}

/// A listening socket passed by systemd (`LISTEN_PID`/`LISTEN_FDS`, fd 3),
/// after checking it is a listening AF_UNIX stream socket.
#[cfg(unix)]
fn inherited_listener() -> anyhow::Result<Option<Listener>> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let Some(fd) = sd_notify::listen_fds()
        .context("reading LISTEN_FDS")?
        .next()
    else {
        return Ok(None);
    };
    // SAFETY: LISTEN_PID names this process, so the service manager passed us
    // fd 3 and nothing else in the process owns or has closed it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    check_activation_socket(&owned)?;
    let listener = interprocess::os::unix::uds_local_socket::tokio::Listener::try_from(owned)
        .context("using the socket passed by systemd")?;
    Ok(Some(listener.into()))
}

/// `Ok` for a listening AF_UNIX SOCK_STREAM socket.
#[cfg(unix)]
fn check_activation_socket(fd: &std::os::fd::OwnedFd) -> Result<(), ActivationError> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    let int_opt = |opt: libc::c_int| -> std::io::Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `raw` is open (owned by `fd`, borrowed for this call);
        // the pointer and length describe `v`, which outlives the call.
        let r = unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                opt,
                (&raw mut v).cast(),
                &raw mut len,
            )
        };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(v)
        }
    };
    let ty =
        int_opt(libc::SO_TYPE).map_err(|source| ActivationError::NotASocket { fd: raw, source })?;
    // SAFETY: all zeroes is a valid sockaddr_storage.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `raw` is open; the pointer and length describe `addr`, which
    // outlives the call.
    let r = unsafe { libc::getsockname(raw, (&raw mut addr).cast(), &raw mut len) };
    if r < 0 {
        return Err(ActivationError::NotASocket {
            fd: raw,
            source: std::io::Error::last_os_error(),
        });
    }
    let family = libc::c_int::from(addr.ss_family);
    let family_name = match family {
        libc::AF_UNIX => "AF_UNIX".to_string(),
        libc::AF_INET => "AF_INET (IPv4)".to_string(),
        libc::AF_INET6 => "AF_INET6 (IPv6)".to_string(),
        other => format!("address family {other}"),
    };
    let type_name = match ty {
        libc::SOCK_STREAM => "SOCK_STREAM".to_string(),
        libc::SOCK_DGRAM => "SOCK_DGRAM (datagram)".to_string(),
        libc::SOCK_SEQPACKET => "SOCK_SEQPACKET".to_string(),
        other => format!("socket type {other}"),
    };
    let unsuitable = |what: String| ActivationError::Unsuitable { fd: raw, what };
    if family != libc::AF_UNIX || ty != libc::SOCK_STREAM {
        let kind = match (family, ty) {
            (libc::AF_INET | libc::AF_INET6, libc::SOCK_STREAM) => " (TCP)",
            (libc::AF_INET | libc::AF_INET6, libc::SOCK_DGRAM) => " (UDP)",
            _ => "",
        };
        return Err(unsuitable(format!(
            "{family_name} {type_name} socket{kind}"
        )));
    }
    let listening = int_opt(libc::SO_ACCEPTCONN)
        .map_err(|source| ActivationError::NotASocket { fd: raw, source })?;
    if listening == 0 {
        return Err(unsuitable(
            "AF_UNIX SOCK_STREAM socket that is not listening".to_string(),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn inherited_listener() -> anyhow::Result<Option<Listener>> {
    Ok(None)
}

/// What the daemon tells its service manager.
#[cfg_attr(not(unix), allow(dead_code))]
enum Notice<'a> {
    /// Up (or reloaded); with a status line.
    Ready(&'a str),
    Reloading,
    Stopping,
    Watchdog,
    Status(&'a str),
}

/// Tell systemd (`sd_notify`), if it is listening.
#[cfg(unix)]
fn notify(notice: Notice<'_>) {
    use sd_notify::NotifyState as S;
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut states = Vec::with_capacity(2);
    match notice {
        Notice::Ready(status) => states.extend([S::Ready, S::Status(status)]),
        Notice::Reloading => {
            states.push(S::Reloading);
            states.extend(S::monotonic_usec_now().ok());
        }
        Notice::Stopping => states.push(S::Stopping),
        Notice::Watchdog => states.push(S::Watchdog),
        Notice::Status(status) => states.push(S::Status(status)),
    }
    if let Err(e) = sd_notify::notify(&states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// No service-manager channel off Unix (the Windows service API is absent).
#[cfg(not(unix))]
fn notify(_notice: Notice<'_>) {}

/// systemd's `WatchdogSec`, when set for this process.
fn watchdog_period() -> Option<Duration> {
    #[cfg(unix)]
    return sd_notify::watchdog_enabled();
    #[cfg(not(unix))]
    return None;
}

fn status_line(supervisor: &Supervisor) -> String {
    let hosts = supervisor.list();
    let count = |s: crate::state::HostState| hosts.iter().filter(|h| h.state == s).count();
    use crate::state::HostState::*;
    format!(
        "{} hosts: {} running, {} restarting, {} crashed, {} stopped",
        hosts.len(),
        count(Running),
        count(Restarting) + count(Starting) + count(Unhealthy),
        count(Crashed),
        count(Stopped) + count(Stopping),
    )
}

fn supervisor_config(
    config: &Config,
    runtime_dir: PathBuf,
    state_dir: &Path,
    cgroups: CgroupRoots,
) -> SupervisorConfig {
    let mut s = SupervisorConfig::new(runtime_dir);
    s.base_env =
        crate::supervisor::allowed_env(std::env::vars_os(), &config.sandbox.env_passthrough);
    for k in DAEMON_ONLY_ENV {
        s.base_env.remove(std::ffi::OsStr::new(k));
    }
    s.state_dir = Some(state_dir.to_path_buf());
    s.cgroups = cgroups;
    s.memory_max = config.sandbox.memory_max_mb.map(|mb| mb * 1024 * 1024);
    s.cpu_max_percent = config.sandbox.cpu_max_percent;
    s.node_args = config
        .sandbox
        .max_old_space_mb
        .map(|mb| vec![format!("--max-old-space-size={mb}")])
        .unwrap_or_default();
    #[cfg(target_os = "linux")]
    {
        use crate::config::{NetworkPolicy, SandboxProfile};
        s.sandbox = crate::sandbox::SandboxPolicy {
            off: config.sandbox.profile == SandboxProfile::Off,
            strict: config.sandbox.profile == SandboxProfile::Strict,
            writable: config.sandbox.writable_paths.clone(),
            hidden: Vec::new(),
            deny_network: config.sandbox.network == NetworkPolicy::Deny,
            require: config.sandbox.require,
            max_open_files: config.sandbox.max_open_files,
        };
    }
    s.node = config.node.path.clone();
    s.node_policy = crate::verify::NodePolicy {
        mode: config.node.verify,
        sha256: config.node.sha256.clone(),
    };
    s.restart = config.restart.policy();
    s.stop_timeout = config.stop_timeout();
    s.ipc = config.ipc_policy();
    s.log_lines = config.log_lines;
    config.apply_host_settings(&mut s);
    s
}

/// Declare the config's hosts; start the autostart ones (all of them at
/// start-up, only newly declared ones on reload). Failures are logged.
async fn apply_hosts(
    supervisor: &Arc<Supervisor>,
    config: &Config,
    startup: bool,
) -> rpc::methods::ReloadReport {
    use crate::supervisor::Declared;
    let mut report = rpc::methods::ReloadReport::default();
    let mut starts = tokio::task::JoinSet::new();
    for h in &config.host {
        let declared = match supervisor.declare(h.start_request()).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(extension_id = %h.extension_id, error = %e, "cannot declare host");
                report.failed.push(rpc::methods::HostFailure {
                    extension_id: h.extension_id.clone(),
                    error: e.to_string(),
                });
                continue;
            }
        };
        if declared == Declared::Deferred {
            tracing::info!(extension_id = %h.extension_id, "an editor runs this host with its own spec: the config's declaration applies once it stops");
            report.deferred.push(h.extension_id.clone());
        }
        if h.autostart && (startup || declared == Declared::New) {
            let sup = supervisor.clone();
            let id = h.extension_id.clone();
            starts.spawn(async move {
                sup.start(crate::supervisor::StartRequest {
                    extension_id: id.clone(),
                    ..Default::default()
                })
                .await
                .err()
                .map(|e| {
                    tracing::error!(extension_id = %id, error = %e, "autostart failed");
                    rpc::methods::HostFailure {
                        extension_id: id,
                        error: format!("autostart failed: {e}"),
                    }
                })
            });
        }
    }
    while let Some(r) = starts.join_next().await {
        if let Ok(Some(failure)) = r {
            report.failed.push(failure);
        }
    }
    report
}

/// Where host cgroups go, when `sandbox.cgroup = "auto"`: a writable
/// cgroup2 subtree, and the v1 hierarchies (memory, cpu) of limits cgroup2
/// cannot apply here.
fn cgroup_roots(config: &Config) -> CgroupRoots {
    #[cfg(target_os = "linux")]
    if config.sandbox.cgroup == crate::config::CgroupMode::Auto {
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
    let _ = config;
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
fn sandbox_support(
    config: &Config,
    roots: &CgroupRoots,
) -> anyhow::Result<Option<serde_json::Value>> {
    let s = crate::sandbox::support();
    if config.sandbox.profile == crate::config::SandboxProfile::Off {
        tracing::warn!(
            "sandbox.profile = \"off\": hosts run without Landlock, seccomp or NO_NEW_PRIVS"
        );
    } else if s.landlock == "unsupported" || s.seccomp == "unsupported" {
        if config.sandbox.require {
            anyhow::bail!(
                "sandbox.require is set but this kernel lacks it: landlock {}, seccomp {}",
                s.landlock,
                s.seccomp
            );
        }
        tracing::warn!(landlock = %s.landlock, seccomp = %s.seccomp, "the sandbox is degraded on this kernel");
    }
    if nix::unistd::geteuid().is_root() && config.sandbox.run_as.is_none() {
        tracing::warn!(
            "running as root without [sandbox] run_as: hosts run as root (with every capability dropped); \
             to run them as an unprivileged user, set run_as = \"nobody\" (or a dedicated user) under [sandbox]"
        );
    }
    let mut v = serde_json::to_value(&s)?;
    v["cgroup"] = serde_json::json!(match &roots.v2 {
        Some(r) => r.display().to_string(),
        None => "unavailable".to_string(),
    });
    for (key, controller, default) in [
        (
            "memoryLimit",
            "memory",
            config.sandbox.memory_max_mb.map(|mb| mb.to_string()),
        ),
        (
            "cpuLimit",
            "cpu",
            config.sandbox.cpu_max_percent.map(|p| format!("{p}%")),
        ),
    ] {
        let via = limit_via(roots, controller);
        if via == "unavailable" && default.is_some() {
            tracing::warn!(
                controller,
                "a default {controller} limit is set but no writable {controller} controller exists: it is not enforced"
            );
        }
        v[key] = serde_json::json!({ "via": via });
    }
    v["memoryLimit"]["mb"] = serde_json::json!(config.sandbox.memory_max_mb);
    v["cpuLimit"]["percent"] = serde_json::json!(config.sandbox.cpu_max_percent);
    v["profile"] = serde_json::json!(match config.sandbox.profile {
        crate::config::SandboxProfile::Default => "default",
        crate::config::SandboxProfile::Off => "off",
        crate::config::SandboxProfile::Strict => "strict",
    });
    Ok(Some(v))
}

/// The daemon's memory, `/proc/<pid>/environ`, `maps` and fds are closed
/// to every process without `CAP_SYS_PTRACE` (hosts have no capability),
/// including processes of the daemon's own user: its environment is not the
/// hosts' allowlisted one. The price: an unprivileged debugger or `perf` can
/// no longer attach to the daemon (root still can), and it leaves no core
/// file.
#[cfg(target_os = "linux")]
fn not_dumpable() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot make the daemon non-dumpable");
    }
}

#[cfg(not(target_os = "linux"))]
fn sandbox_support(
    _config: &Config,
    _roots: &CgroupRoots,
) -> anyhow::Result<Option<serde_json::Value>> {
    Ok(None)
}

/// Keys a reload cannot change in a running daemon.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.socket != new.socket {
        v.push("socket");
    }
    if old.max_message_bytes != new.max_message_bytes {
        v.push("max_message_bytes");
    }
    if old.max_connections != new.max_connections {
        v.push("max_connections");
    }
    if old.max_requests_per_connection != new.max_requests_per_connection {
        v.push("max_requests_per_connection");
    }
    if old.log_level != new.log_level {
        v.push("log_level");
    }
    if old.sandbox.cgroup != new.sandbox.cgroup {
        v.push("sandbox.cgroup");
    }
    if old.log_dir != new.log_dir
        || old.log_format != new.log_format
        || old.log_max_files != new.log_max_files
    {
        v.push("log_dir/log_format/log_max_files");
    }
    v
}

/// Descriptors the daemon itself holds per ready host (measured: the
/// child's pidfd, its stdout and stderr pipes, the IPC listening socket
/// and the accepted IPC connection); README "Daemon options" says so.
pub const FDS_PER_HOST: u64 = 5;

/// Raise the soft open-files limit to the hard one, and log both: every
/// host costs the daemon [`FDS_PER_HOST`] descriptors, and 1024 is too few
/// for a thousand hosts.
#[cfg(unix)]
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let mut now = soft;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => now = hard,
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-files limit"),
        }
    }
    tracing::info!(
        limit = now,
        was = soft,
        hard,
        hosts = now / FDS_PER_HOST,
        "open-files limit (each ready host costs the daemon about {FDS_PER_HOST} descriptors)"
    );
}

/// Run the daemon in the foreground until SIGTERM, SIGINT, SIGQUIT, SIGXCPU
/// or `daemon.shutdown` (see [`Signals`] for every signal). `logs` reopens
/// the log file on SIGUSR1.
pub async fn run(opts: Options, mut config: Config, logs: LogReopen) -> anyhow::Result<()> {
    #[cfg(unix)]
    raise_nofile_limit();
    #[cfg(target_os = "linux")]
    not_dumpable();
    // Before anything can accept a client: a SIGTERM that arrives while we
    // start up must shut down cleanly, not kill us.
    let mut signals = Signals::new()?;
    let socket = paths::resolve_socket(opts.socket.as_deref(), config.socket.as_deref());
    #[cfg(unix)]
    let runtime_dir = socket
        .parent()
        .map(Path::to_path_buf)
        .context("socket path has no directory")?;
    // A pipe has no directory of its own (every pipe's parent is
    // `\\.\pipe\`): the pipe's full name is what sets this daemon's host
    // pipes apart from another user's.
    #[cfg(windows)]
    let runtime_dir = socket.clone();
    let inherited = inherited_listener()?;
    let activated = inherited.is_some();
    #[cfg(unix)]
    paths::ensure_private_dir(&runtime_dir)?;
    #[cfg(unix)]
    let _lock = paths::lock_instance(&socket)?;
    let state_dir = paths::resolve_state_dir(opts.state_dir.as_deref());
    #[cfg(unix)]
    if paths::make_private_dir(&state_dir, "state directory")? {
        tracing::warn!(dir = %state_dir.display(), "the state directory was open to group or others: made it 0700");
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating state dir {}", state_dir.display()))?;
    let cgroups = cgroup_roots(&config);
    // Hosts a SIGKILLed predecessor left behind (its direct children died
    // with it through PDEATHSIG; their own children may not have): only
    // what the record proves was ours (our cgroup roots, our hosts'
    // environment, the recorded group leader and start time).
    // Records name only cgroup2 cgroups (the v1 ones hold limits, not
    // processes to kill).
    let provenance = crate::supervisor::records::Provenance {
        cgroup_roots: cgroups.v2.iter().cloned().collect(),
        runtime_dir: runtime_dir.clone(),
    };
    let recovered =
        crate::supervisor::records::reap_leftovers(&state_dir.join("running.json"), &provenance);
    for r in &recovered {
        tracing::warn!(extension_id = %r.extension_id, pid = r.pid, reaped = r.reaped, detail = %r.detail, "a previous daemon died leaving this host running");
    }
    // Every host IPC directory is a leftover at start-up: no host runs yet.
    #[cfg(unix)]
    {
        let root = crate::ipc::transport::ipc_root(&runtime_dir);
        if let Ok(dirs) = std::fs::read_dir(&root) {
            let n = dirs.count();
            if n > 0 {
                match std::fs::remove_dir_all(&root) {
                    Ok(()) => {
                        tracing::info!(count = n, "removed IPC directories a previous daemon left")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, dir = %root.display(), "cannot remove leftover IPC directories")
                    }
                }
            }
        }
    }
    let listener = match inherited {
        Some(l) => l,
        None => bind(&socket)?,
    };

    let supervisor = Supervisor::new(supervisor_config(
        &config,
        runtime_dir.clone(),
        &state_dir,
        cgroups.clone(),
    ));
    let state = Arc::new(DaemonState {
        config_path: config_source(&opts).map(|(p, _)| p),
        last_reload_error: Mutex::new(None),
        sandbox: sandbox_support(&config, &cgroups)?,
    });
    let (control_tx, mut control_rx) = mpsc::channel(8);
    let module = rpc::build_module(RpcContext {
        supervisor: supervisor.clone(),
        info: DaemonInfo {
            pid: std::process::id(),
            started_at: SystemTime::now(),
            started: Instant::now(),
            socket: socket.clone(),
            recovered,
        },
        control: control_tx,
        state: state.clone(),
    });
    let (close_tx, close_rx) = watch::channel(false);
    let limits = ServerLimits {
        max_connections: config.max_connections,
        per_connection: Limits {
            max_message_bytes: config.max_message_bytes,
            max_in_flight: config.max_requests_per_connection,
            idle_timeout: (config.idle_timeout_ms > 0)
                .then(|| std::time::Duration::from_millis(config.idle_timeout_ms)),
        },
    };
    let hosts: rpc::server::HostCheck = {
        let supervisor = supervisor.clone();
        Arc::new(move |pid| supervisor.host_peers().judge(pid))
    };
    let server = tokio::spawn(rpc::server::run(
        listener,
        module.into(),
        limits,
        hosts,
        close_rx,
    ));
    tracing::info!(socket = %socket.display(), pid = std::process::id(), activated, "listening");

    apply_hosts(&supervisor, &config, true).await;
    let status_task = tokio::spawn(report_status(supervisor.clone()));
    let watchdog_task = watchdog_period().map(|period| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tick.tick().await;
                notify(Notice::Watchdog);
            }
        })
    });
    let status = status_line(&supervisor);
    notify(Notice::Ready(&status));
    tracing::info!(%status, "ready: autostart hosts spawned");

    let why = loop {
        tokio::select! {
            s = signals.next() => match s {
                Sig::Hup => {
                    let _ = reload(&opts, &mut config, &supervisor, &state).await;
                }
                Sig::Usr1 => reopen_log(&logs),
                Sig::Term => break "SIGTERM",
                Sig::Int => break "SIGINT",
                Sig::Quit => break "SIGQUIT",
                Sig::XCpu => break "SIGXCPU (CPU time limit)",
            },
            Some(c) = control_rx.recv() => match c {
                Control::Reload(reply) => {
                    let _ = reply.send(reload(&opts, &mut config, &supervisor, &state).await);
                }
                Control::Shutdown => break "daemon.shutdown",
            },
        }
    };
    let stop_all = supervisor.shutdown(SHUTDOWN_DEADLINE);
    tokio::pin!(stop_all);
    // Its first poll makes the supervisor refuse mutations (-32005): do it
    // before saying so, or a request sent on seeing this line could still
    // be accepted.
    let stopped = futures_util::FutureExt::now_or_never(&mut stop_all).is_some();
    tracing::info!(reason = why, "shutting down: stopping every host");
    notify(Notice::Stopping);
    status_task.abort();
    if !stopped {
        loop {
            tokio::select! {
                () = &mut stop_all => break,
                s = signals.next() => match s {
                    Sig::Hup => {}
                    Sig::Usr1 => reopen_log(&logs),
                    Sig::Term | Sig::Int | Sig::Quit | Sig::XCpu => {
                        tracing::warn!(signal = ?s, "second signal during shutdown: killing every host now");
                        supervisor.kill_all_now();
                    }
                }
            }
        }
    }
    if !activated {
        let _ = std::fs::remove_file(&socket);
    }
    #[cfg(target_os = "linux")]
    {
        let roots = supervisor.config().cgroups.clone();
        for root in roots.v2.iter().chain(&roots.memory_v1) {
            crate::cgroup::remove_ours(root);
        }
    }
    close_tx.send_replace(true);
    let _ = server.await;
    if let Some(w) = watchdog_task {
        w.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Re-read the config: new defaults for later starts, newly declared
/// autostart hosts started, running hosts untouched. An invalid config keeps
/// the old one and is reported in `daemon.info` as `lastReloadError`.
async fn reload(
    opts: &Options,
    config: &mut Config,
    supervisor: &Arc<Supervisor>,
    state: &DaemonState,
) -> Result<rpc::methods::ReloadReport, String> {
    notify(Notice::Reloading);
    let result = match load_config(opts) {
        Err(e) => {
            tracing::error!(error = %e, "config reload failed; keeping the previous config");
            Err(e.to_string())
        }
        Ok(new) => {
            for key in restart_only_changes(config, &new) {
                tracing::warn!(key, "config change needs a daemon restart to take effect");
            }
            let current = supervisor.config();
            let state_dir = current.state_dir.clone().unwrap_or_default();
            supervisor.reconfigure(supervisor_config(
                &new,
                current.runtime_dir.clone(),
                &state_dir,
                // Found at start-up (`sandbox.cgroup` is restart-only).
                current.cgroups.clone(),
            ));
            let report = apply_hosts(supervisor, &new, false).await;
            *config = new;
            tracing::info!(
                failed = report.failed.len(),
                deferred = report.deferred.len(),
                "config reloaded"
            );
            Ok(report)
        }
    };
    // A reload that applied only part of the config says so too.
    *state
        .last_reload_error
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = match &result {
        Err(e) => Some(e.clone()),
        Ok(r) if !r.failed.is_empty() => Some(format!(
            "the config was reloaded but {} host(s) could not be applied: {}",
            r.failed.len(),
            r.failed
                .iter()
                .map(|f| format!("{}: {}", f.extension_id, f.error))
                .collect::<Vec<_>>()
                .join("; ")
        )),
        Ok(_) => None,
    };
    let status = status_line(supervisor);
    notify(Notice::Ready(&status));
    result
}

/// Keep systemd's STATUS= current: after each burst of state changes.
async fn report_status(supervisor: Arc<Supervisor>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut events = supervisor.subscribe(&None).events;
    loop {
        match events.recv().await {
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => return,
        }
        // Coalesce a burst into one update.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) =
            tokio::time::timeout_at(deadline, events.recv()).await
        {}
        let status = status_line(&supervisor);
        notify(Notice::Status(&status));
    }
}

/// SIGUSR1: the next log line goes to a freshly opened file.
fn reopen_log(logs: &LogReopen) {
    logs.request();
    tracing::info!(signal = "SIGUSR1", "reopened the log file");
}

// Windows has no SIGQUIT, SIGUSR1 or SIGXCPU.
#[cfg_attr(windows, allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sig {
    Term,
    Int,
    Hup,
    /// Graceful shutdown, like SIGTERM (not a core dump).
    Quit,
    /// Reopen the log file.
    Usr1,
    /// The soft CPU-time limit was reached; SIGKILL follows at the hard one:
    /// shut down gracefully while there is time.
    XCpu,
}

/// Signals whose default action would end the daemon without clean-up and
/// that mean nothing to it: caught and logged, so they cannot kill it.
/// (SIGPIPE is ignored by the Rust runtime; faults such as SIGSEGV, SIGBUS,
/// SIGILL, SIGFPE, SIGABRT, SIGTRAP and SIGSYS are left alone: they report
/// bugs.) Handlers, unlike `SIG_IGN`, are reset by `execve`, so hosts still
/// get the default dispositions.
#[cfg(unix)]
fn ignored_signals() -> Vec<(i32, String)> {
    // Extended below on Linux only.
    #[cfg_attr(
        not(any(target_os = "linux", target_os = "android")),
        allow(unused_mut)
    )]
    let mut v: Vec<(i32, String)> = vec![
        (libc::SIGUSR2, "SIGUSR2".into()),
        (libc::SIGALRM, "SIGALRM".into()),
        (libc::SIGVTALRM, "SIGVTALRM".into()),
        (libc::SIGPROF, "SIGPROF".into()),
        (libc::SIGIO, "SIGIO (SIGPOLL)".into()),
        (libc::SIGXFSZ, "SIGXFSZ".into()),
    ];
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        v.push((libc::SIGSTKFLT, "SIGSTKFLT".into()));
        v.push((libc::SIGPWR, "SIGPWR".into()));
        for n in libc::SIGRTMIN()..=libc::SIGRTMAX() {
            let name = if n == libc::SIGRTMIN() {
                "SIGRTMIN".to_string()
            } else {
                format!("SIGRTMIN+{}", n - libc::SIGRTMIN())
            };
            v.push((n, name));
        }
    }
    v
}

/// The signals the main loop acts on, as one stream; on Windows, Ctrl-C
/// (as SIGINT) and Ctrl-Break, console close and system shutdown (as
/// SIGTERM). The ones in [`ignored_signals`] are logged by tasks of their
/// own. The README's signal table lists them all.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    quit: tokio::signal::unix::Signal,
    #[cfg(unix)]
    usr1: tokio::signal::unix::Signal,
    #[cfg(unix)]
    xcpu: tokio::signal::unix::Signal,
    #[cfg(unix)]
    ignored: Vec<tokio::task::JoinHandle<()>>,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
    #[cfg(windows)]
    ctrl_break: tokio::signal::windows::CtrlBreak,
    #[cfg(windows)]
    close: tokio::signal::windows::CtrlClose,
    #[cfg(windows)]
    shutdown: tokio::signal::windows::CtrlShutdown,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut ignored = Vec::new();
            for (n, name) in ignored_signals() {
                match signal(SignalKind::from_raw(n)) {
                    Ok(mut s) => ignored.push(tokio::spawn(async move {
                        while s.recv().await.is_some() {
                            tracing::info!(signal = %name, "ignored a signal (it has no meaning to dscode-hostd)");
                        }
                    })),
                    // tokio keeps no slot for the very last real-time
                    // signal: a do-nothing handler keeps it harmless.
                    Err(_) => ignore_silently(n)
                        .with_context(|| format!("installing a handler for {name}"))?,
                }
            }
            Ok(Signals {
                term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
                int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
                hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
                quit: signal(SignalKind::quit()).context("installing SIGQUIT handler")?,
                usr1: signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?,
                xcpu: signal(SignalKind::from_raw(libc::SIGXCPU))
                    .context("installing SIGXCPU handler")?,
                ignored,
            })
        }
        #[cfg(windows)]
        {
            use tokio::signal::windows;
            Ok(Signals {
                ctrl_c: windows::ctrl_c().context("installing the Ctrl-C handler")?,
                ctrl_break: windows::ctrl_break().context("installing the Ctrl-Break handler")?,
                close: windows::ctrl_close().context("installing the console-close handler")?,
                shutdown: windows::ctrl_shutdown().context("installing the shutdown handler")?,
            })
        }
    }

    async fn next(&mut self) -> Sig {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => Sig::Term,
                _ = self.int.recv() => Sig::Int,
                _ = self.hup.recv() => Sig::Hup,
                _ = self.quit.recv() => Sig::Quit,
                _ = self.usr1.recv() => Sig::Usr1,
                _ = self.xcpu.recv() => Sig::XCpu,
            }
        }
        #[cfg(windows)]
        {
            tokio::select! {
                _ = self.ctrl_c.recv() => Sig::Int,
                _ = self.ctrl_break.recv() => Sig::Term,
                _ = self.close.recv() => Sig::Term,
                _ = self.shutdown.recv() => Sig::Term,
            }
        }
    }
}

#[cfg(unix)]
impl Drop for Signals {
    fn drop(&mut self) {
        for t in &self.ignored {
            t.abort();
        }
    }
}

/// A handler that does nothing, for a signal tokio cannot listen for.
#[cfg(unix)]
fn ignore_silently(n: i32) -> std::io::Result<()> {
    extern "C" fn nothing(_: libc::c_int) {}
    // SAFETY: all zeroes is a valid `sigaction` (no flags, an empty mask).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: the handler does nothing, so it is async-signal-safe; `sa`
    // outlives the call and the old action is not asked for.
    if unsafe { libc::sigaction(n, &raw const sa, std::ptr::null_mut()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
