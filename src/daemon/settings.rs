//! The config turned into typed settings, once: [`Settings::from_config`]
//! reads the command line ([`Options`]) and the loaded [`Config`] and says
//! everything the rest of the daemon needs (socket, directories, server
//! limits, logging, the sandbox's defaults, the supervisor's settings, the
//! declared hosts). Nothing else in `daemon` reads a `Config`. A reload
//! builds new `Settings` the same way and compares them with the running
//! ones ([`Settings::restart_only_changes`]).

use std::path::{Path, PathBuf};

use crate::config::{self, CgroupMode, Config, HostConfig, HostOutput, LogFormat, SandboxProfile};
use crate::paths;
use crate::rpc::{server::ServerLimits, transport::Limits};
use crate::supervisor::SupervisorConfig;

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

/// The file a config came from, if one was read: `--config` (which must
/// exist, or loading failed) or the default path when it exists; `None`
/// when the daemon runs on the defaults (`daemon.info`'s `configPath`).
fn file_read(source: Option<(PathBuf, bool)>) -> Option<PathBuf> {
    source
        .filter(|(path, required)| *required || path.exists())
        .map(|(path, _)| path)
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

/// Why the config cannot become settings.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("socket path {0} has no directory")]
    NoSocketDir(PathBuf),
}

/// The daemon's own logs (read at start-up only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// `log_level` (`RUST_LOG` wins); applied again at a reload.
    pub level: String,
    /// `log_dir`, else the state directory.
    pub dir: PathBuf,
    /// Whether `dir` is `log_dir` (not the state directory).
    pub dir_configured: bool,
    pub format: LogFormat,
    pub max_files: usize,
    pub max_bytes: u64,
    pub host_output: HostOutput,
}

/// What the daemon itself reports and checks of the sandbox (the hosts'
/// policy is in [`SupervisorConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSettings {
    pub profile: SandboxProfile,
    /// Refuse to start when the kernel lacks Landlock or seccomp.
    pub require: bool,
    /// Whether `run_as` names a user for the hosts.
    pub run_as: bool,
    /// The default limits, as configured (for `daemon.info`).
    pub memory_max_mb: Option<u64>,
    pub cpu_max_percent: Option<u32>,
    /// `sandbox.cgroup`: whether host cgroups are looked for at all.
    pub cgroup: CgroupMode,
}

/// Everything the daemon runs on, from the command line and the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The command line: a reload reads the same config file again.
    options: Options,
    /// The config file in use, for `daemon.info`.
    pub config_path: Option<PathBuf>,
    /// The control socket (on Windows, the pipe's name).
    pub socket: PathBuf,
    /// Where host IPC sockets go: the socket's directory (on Windows, the
    /// pipe's full name, which sets this daemon's host pipes apart).
    pub runtime_dir: PathBuf,
    /// The state directory (`running.json`, host storage, the default log
    /// directory).
    pub state_dir: PathBuf,
    /// Connections and per-connection bounds (start-up only).
    pub server: ServerLimits,
    pub logging: LogSettings,
    pub sandbox: SandboxSettings,
    /// The supervisor's settings, without the cgroup roots (found at
    /// start-up by [`super::probe::cgroup_roots`]).
    pub supervisor: SupervisorConfig,
    /// `[[host]]` declarations.
    pub hosts: Vec<HostConfig>,
}

impl Settings {
    /// Read the config once into settings.
    pub fn from_config(config: &Config, opts: &Options) -> Result<Settings, SettingsError> {
        let socket = paths::resolve_socket(opts.socket.as_deref(), config.socket.as_deref());
        #[cfg(unix)]
        let runtime_dir = socket
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| SettingsError::NoSocketDir(socket.clone()))?;
        #[cfg(windows)]
        let runtime_dir = socket.clone();
        let state_dir = paths::resolve_state_dir(opts.state_dir.as_deref());
        let server = ServerLimits {
            max_connections: config.max_connections,
            per_connection: Limits {
                max_message_bytes: config.max_message_bytes,
                max_in_flight: config.max_requests_per_connection,
                idle_timeout: (config.idle_timeout_ms > 0)
                    .then(|| std::time::Duration::from_millis(config.idle_timeout_ms)),
            },
        };
        let logging = LogSettings {
            level: config.log_level.clone(),
            dir: config.log_dir.clone().unwrap_or_else(|| state_dir.clone()),
            dir_configured: config.log_dir.is_some(),
            format: config.log_format,
            max_files: config.log_max_files,
            max_bytes: config.log_max_bytes,
            host_output: config.host_output,
        };
        let sandbox = SandboxSettings {
            profile: config.sandbox.profile,
            require: config.sandbox.require,
            run_as: config.sandbox.run_as.is_some(),
            memory_max_mb: config.sandbox.memory_max_mb,
            cpu_max_percent: config.sandbox.cpu_max_percent,
            cgroup: config.sandbox.cgroup,
        };
        let supervisor = supervisor_config(config, runtime_dir.clone(), &state_dir);
        Ok(Settings {
            options: opts.clone(),
            config_path: file_read(config_source(opts)),
            socket,
            runtime_dir,
            state_dir,
            server,
            logging,
            sandbox,
            supervisor,
            hosts: config.host.clone(),
        })
    }

    /// The settings of the config file as it is now (a reload): the same
    /// command line, the file read again.
    pub fn reread(&self) -> Result<Settings, String> {
        let config = load_config(&self.options).map_err(|e| e.to_string())?;
        Settings::from_config(&config, &self.options).map_err(|e| e.to_string())
    }

    /// Keys whose change a running daemon cannot apply: read at start-up
    /// only (the socket, the server's limits, logging, `sandbox.cgroup`).
    pub fn restart_only_changes(&self, new: &Settings) -> Vec<&'static str> {
        let (old_conn, new_conn) = (&self.server.per_connection, &new.server.per_connection);
        let (old_log, new_log) = (&self.logging, &new.logging);
        [
            (self.socket != new.socket, "socket"),
            (
                old_conn.max_message_bytes != new_conn.max_message_bytes,
                "max_message_bytes",
            ),
            (
                self.server.max_connections != new.server.max_connections,
                "max_connections",
            ),
            (
                old_conn.max_in_flight != new_conn.max_in_flight,
                "max_requests_per_connection",
            ),
            (
                old_conn.idle_timeout != new_conn.idle_timeout,
                "idle_timeout_ms",
            ),
            (self.sandbox.cgroup != new.sandbox.cgroup, "sandbox.cgroup"),
            (
                old_log.dir != new_log.dir
                    || old_log.format != new_log.format
                    || old_log.max_files != new_log.max_files,
                "log_dir/log_format/log_max_files",
            ),
            (old_log.max_bytes != new_log.max_bytes, "log_max_bytes"),
            (old_log.host_output != new_log.host_output, "host_output"),
        ]
        .into_iter()
        .filter_map(|(changed, key)| changed.then_some(key))
        .collect()
    }
}

/// The supervisor's settings from the config (the cgroup roots are left
/// empty: they are found at start-up).
fn supervisor_config(config: &Config, runtime_dir: PathBuf, state_dir: &Path) -> SupervisorConfig {
    let mut s = SupervisorConfig::new(runtime_dir);
    s.base_env =
        crate::supervisor::allowed_env(std::env::vars_os(), &config.sandbox.env_passthrough);
    for k in DAEMON_ONLY_ENV {
        s.base_env.remove(std::ffi::OsStr::new(k));
    }
    s.state_dir = Some(state_dir.to_path_buf());
    s.memory_max = config.sandbox.memory_max_mb.map(|mb| mb * 1024 * 1024);
    s.cpu_max_percent = config.sandbox.cpu_max_percent;
    s.node_args = config
        .sandbox
        .max_old_space_mb
        .map(|mb| vec![format!("--max-old-space-size={mb}")])
        .unwrap_or_default();
    #[cfg(target_os = "linux")]
    {
        use crate::config::NetworkPolicy;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> Settings {
        let config = Config::parse(toml, Path::new("test.toml")).unwrap();
        let opts = Options {
            config: Some("/nonexistent/config.toml".into()),
            socket: Some("/run/test/hostd.sock".into()),
            state_dir: Some("/var/test/state".into()),
        };
        Settings::from_config(&config, &opts).unwrap()
    }

    #[test]
    fn the_config_becomes_settings_once() {
        let s =
            settings("max_connections = 7\nidle_timeout_ms = 0\n[sandbox]\nmemory_max_mb = 64\n");
        assert_eq!(s.socket, Path::new("/run/test/hostd.sock"));
        assert_eq!(s.runtime_dir, Path::new("/run/test"));
        assert_eq!(s.supervisor.runtime_dir, Path::new("/run/test"));
        assert_eq!(s.logging.dir, Path::new("/var/test/state"));
        assert!(!s.logging.dir_configured);
        assert_eq!(s.server.max_connections, 7);
        assert_eq!(s.server.per_connection.idle_timeout, None);
        assert_eq!(s.supervisor.memory_max, Some(64 * 1024 * 1024));
        assert_eq!(s.supervisor.cgroups, Default::default());
        assert_eq!(
            s.config_path.as_deref(),
            Some(Path::new("/nonexistent/config.toml"))
        );
    }

    #[test]
    fn config_path_names_only_a_file_that_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let there = dir.path().join("config.toml");
        std::fs::write(&there, "").unwrap();
        let missing = dir.path().join("missing.toml");
        // The default path: named when it exists, not when it does not.
        assert_eq!(file_read(Some((there.clone(), false))), Some(there));
        assert_eq!(file_read(Some((missing.clone(), false))), None);
        // `--config`: loading failed already if it was missing.
        assert_eq!(file_read(Some((missing.clone(), true))), Some(missing));
        assert_eq!(file_read(None), None);
    }

    #[test]
    fn the_daemons_own_variables_never_reach_hosts() {
        let s = settings("[sandbox]\nenv_passthrough = [\"NOTIFY_SOCKET\", \"LISTEN_FDS\"]\n");
        for k in DAEMON_ONLY_ENV {
            assert!(!s.supervisor.base_env.contains_key(std::ffi::OsStr::new(k)));
        }
    }

    #[test]
    fn a_reload_names_what_needs_a_restart() {
        let old = settings("");
        assert!(old.restart_only_changes(&old.clone()).is_empty());
        let new = settings(
            "max_connections = 3\nlog_level = \"debug\"\nidle_timeout_ms = 5\nstop_timeout_ms = 1\n",
        );
        assert_eq!(
            old.restart_only_changes(&new),
            ["max_connections", "idle_timeout_ms"]
        );
    }
}
