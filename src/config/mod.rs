//! The daemon's TOML configuration.
//!
//! Every key has a default, so an empty file (or none) is a valid config.
//! Unknown keys are errors, so a typo never silently does nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::supervisor::RestartPolicy;

mod check;
mod host;

pub use host::HostConfig;

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config {path}: `{key}` {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

/// The default restart policy for hosts that do not set their own.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartConfig {
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub stable_after_ms: u64,
}

impl Default for RestartConfig {
    fn default() -> Self {
        let p = RestartPolicy::default();
        RestartConfig {
            max_attempts: p.max_attempts,
            backoff_ms: crate::time::millis(p.backoff),
            max_backoff_ms: crate::time::millis(p.max_backoff),
            stable_after_ms: crate::time::millis(p.stable_after),
        }
    }
}

impl RestartConfig {
    pub fn policy(&self) -> RestartPolicy {
        RestartPolicy {
            max_attempts: self.max_attempts,
            backoff: Duration::from_millis(self.backoff_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
            stable_after: Duration::from_millis(self.stable_after_ms),
        }
    }
}

/// Where host output lines are written (they are always in `host.logs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostOutput {
    #[default]
    File,
    Stderr,
    Both,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `node`: a path, or a `[node]` table with `path`, `sha256` and `verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeConfig {
    pub path: Option<PathBuf>,
    /// Allowed sha256 digests of the binary (hex).
    pub sha256: Vec<String>,
    pub verify: crate::verify::VerifyMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeTable {
    path: Option<PathBuf>,
    #[serde(default)]
    sha256: Vec<String>,
    #[serde(default)]
    verify: crate::verify::VerifyMode,
}

impl<'de> Deserialize<'de> for NodeConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = NodeConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a path to the Node binary, or a [node] table")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<NodeConfig, E> {
                Ok(NodeConfig {
                    path: Some(PathBuf::from(v)),
                    ..Default::default()
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<NodeConfig, A::Error> {
                let t = NodeTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(NodeConfig {
                    path: t.path,
                    sha256: t.sha256.iter().map(|h| h.to_ascii_lowercase()).collect(),
                    verify: t.verify,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `[sandbox]`: what hosts may see and do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Extra variables of the daemon's environment hosts inherit, by name.
    pub env_passthrough: Vec<String>,
    /// `default` (Landlock + seccomp + NO_NEW_PRIVS + RLIMIT_CORE=0) or `off`.
    pub profile: SandboxProfile,
    /// More paths hosts may write, beyond their private dir and TMPDIR.
    pub writable_paths: Vec<PathBuf>,
    /// `allow` or `deny` (TCP bind/connect, via Landlock; UDP is not covered).
    pub network: NetworkPolicy,
    /// Make a kernel without Landlock a start error instead of a warning.
    pub require: bool,
    /// The hosts' open-files limit (RLIMIT_NOFILE); unset inherits the daemon's.
    pub max_open_files: Option<u64>,
    /// `auto`: a cgroup per host where a writable cgroup2 exists; `off`.
    pub cgroup: CgroupMode,
    /// Node's V8 heap limit, passed as `--max-old-space-size` (MiB). Memory
    /// is not bounded with RLIMIT_AS: it breaks Node's WebAssembly.
    pub max_old_space_mb: Option<u64>,
    /// Opt-in default memory limit per host (MiB), through its cgroup
    /// (cgroup2 or a v1 memory hierarchy); otherwise a warning.
    pub memory_max_mb: Option<u64>,
    /// Opt-in default CPU limit per host, percent of one CPU (200 = two
    /// CPUs), through its cgroup (cgroup2 `cpu.max` or v1 CFS quota).
    pub cpu_max_percent: Option<u32>,
    /// A daemon running as root runs hosts as this user (a name, or a uid
    /// as a string), with their private directories owned by it.
    pub run_as: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxProfile {
    #[default]
    Default,
    /// `bwrap`: own PID (and, with network denied, network) namespace.
    Strict,
    Off,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    #[default]
    Auto,
    Off,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkPolicy {
    #[default]
    Allow,
    Deny,
}

/// See `config.example.toml` for every key with its default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Control socket path.
    pub socket: Option<PathBuf>,
    /// Longest accepted request line, in bytes.
    pub max_message_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Requests one connection may have in flight; more wait, none are dropped.
    pub max_requests_per_connection: usize,
    /// Close a connection that sends no complete line for this long while it
    /// has no request in flight and no subscription; 0 never does.
    pub idle_timeout_ms: u64,
    /// Node binary; when unset, the bundled/`DSCODE_RESOURCE_PATH`/`PATH` search.
    pub node: NodeConfig,
    /// Default SIGTERM-to-SIGKILL grace for `host.stop`.
    pub stop_timeout_ms: u64,
    /// Output lines kept per host for `host.logs`.
    pub log_lines: usize,
    /// Default restart policy.
    pub restart: RestartConfig,
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter; `RUST_LOG` wins.
    pub log_level: String,
    /// Directory of the daemon's log files; default: the state directory.
    pub log_dir: Option<PathBuf>,
    /// `text` or `json` (one object per line).
    pub log_format: LogFormat,
    /// Log files kept (daily, and more when one reaches `log_max_bytes`).
    pub log_max_files: usize,
    /// A log file is closed and a new one begun past this many bytes: the
    /// log directory holds at most `log_max_files` × this.
    pub log_max_bytes: u64,
    /// Each host's output limit, lines a second (0: none), with a burst of
    /// two seconds' worth; a marker line says how many were dropped.
    pub log_rate_lines: u64,
    /// The same in bytes a second.
    pub log_rate_bytes: u64,
    /// Where host output lines go besides `host.logs`: `file` (the log
    /// file), `stderr` (the journal, under systemd) or `both`.
    pub host_output: HostOutput,
    /// Declared hosts.
    pub host: Vec<HostConfig>,
    /// Longest IPC frame a host may send (or be sent).
    pub ipc_max_message_bytes: usize,
    /// A host must send `extension-host-ready` within this; 0 disables.
    pub ready_timeout_ms: u64,
    /// How often ready hosts are pinged; 0 disables heartbeats.
    pub heartbeat_interval_ms: u64,
    /// A ping unanswered this long marks the host unresponsive.
    pub heartbeat_timeout_ms: u64,
    /// A host's request unanswered this long is answered `-error "timed out"`.
    pub host_request_timeout_ms: u64,
    /// Requests per host waiting for an editor (queued while none is
    /// attached, or delivered and unanswered); past it, `-error` at once.
    pub host_request_queue_max: usize,
    /// The same bound in bytes.
    pub host_request_queue_bytes: usize,
    /// Payloads the daemon answers host requests with, by type, for every
    /// host (a `[[host]]`'s or `host.start`'s own table wins).
    pub static_answers: BTreeMap<String, serde_json::Value>,
    pub sandbox: SandboxConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: None,
            max_message_bytes: 1024 * 1024,
            max_connections: 128,
            max_requests_per_connection: 64,
            idle_timeout_ms: 30_000,
            node: NodeConfig::default(),
            stop_timeout_ms: 5000,
            log_lines: 1000,
            restart: RestartConfig::default(),
            log_level: "info".into(),
            log_dir: None,
            log_format: LogFormat::Text,
            log_max_files: 7,
            log_max_bytes: 64 * 1024 * 1024,
            log_rate_lines: 1000,
            log_rate_bytes: 1024 * 1024,
            host_output: HostOutput::File,
            host: Vec::new(),
            ipc_max_message_bytes: 50 * 1024 * 1024,
            ready_timeout_ms: 60_000,
            heartbeat_interval_ms: 5_000,
            heartbeat_timeout_ms: 15_000,
            host_request_timeout_ms: 30_000,
            host_request_queue_max: 128,
            host_request_queue_bytes: 64 * 1024 * 1024,
            static_answers: BTreeMap::new(),
            sandbox: SandboxConfig::default(),
        }
    }
}

impl Config {
    /// Parse and check a config's text. `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.check(path)?;
        Ok(config)
    }

    /// Load `path`. With `required` false a missing file means the defaults.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn stop_timeout(&self) -> Duration {
        Duration::from_millis(self.stop_timeout_ms)
    }

    /// Host-request limits, static answers and the hosts' user, into the
    /// supervisor's settings.
    pub fn apply_host_settings(&self, s: &mut crate::supervisor::SupervisorConfig) {
        s.log_rate = crate::supervisor::logs::LogRate {
            lines_per_sec: self.log_rate_lines,
            bytes_per_sec: self.log_rate_bytes,
        };
        s.run_as = self
            .sandbox
            .run_as
            .as_deref()
            .and_then(|u| crate::spawn::HostUser::lookup(u).ok());
        s.host_requests = crate::supervisor::messages::HubLimits {
            timeout: Duration::from_millis(self.host_request_timeout_ms),
            max_count: self.host_request_queue_max,
            max_bytes: self.host_request_queue_bytes,
        };
        s.static_answers =
            crate::supervisor::static_answers(&self.static_answers).unwrap_or_default();
    }

    /// The default readiness and heartbeat policy.
    pub fn ipc_policy(&self) -> crate::supervisor::IpcPolicy {
        crate::supervisor::IpcPolicy {
            ready_timeout: Duration::from_millis(self.ready_timeout_ms),
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            heartbeat_timeout: Duration::from_millis(self.heartbeat_timeout_ms),
            max_frame: self.ipc_max_message_bytes,
        }
    }
}

/// `~/.config/dscode-hostd/config.toml` on Linux.
pub fn default_config_path() -> Option<PathBuf> {
    crate::paths::project_dirs().map(|d| d.config_dir().join("config.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_default() {
        assert_eq!(
            Config::parse("", Path::new("x")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = Config::parse(
            "max_connections = 3\nsokcet = \"/x\"\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("sokcet"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn wrong_type_names_key() {
        let err = Config::parse("stop_timeout_ms = \"5s\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("stop_timeout_ms"), "{err}");
    }

    #[test]
    fn negative_timeout_is_refused() {
        assert!(Config::parse("stop_timeout_ms = -1\n", Path::new("c.toml")).is_err());
    }

    #[test]
    fn missing_optional_file_is_default_but_missing_explicit_is_error() {
        let p = Path::new("/nonexistent/dscode-hostd.toml");
        assert_eq!(Config::load(p, false).unwrap(), Config::default());
        assert!(matches!(
            Config::load(p, true),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn node_is_a_path_or_a_table() {
        let c = Config::parse("node = \"/usr/bin/node\"\n", Path::new("c")).unwrap();
        assert_eq!(c.node.path.as_deref(), Some(Path::new("/usr/bin/node")));
        let c = Config::parse("[node]\npath = \"/opt/node\"\n", Path::new("c")).unwrap();
        assert_eq!(c.node.path.as_deref(), Some(Path::new("/opt/node")));
        assert!(Config::parse("[node]\npaht = \"/x\"\n", Path::new("c")).is_err());
    }

    #[test]
    fn node_verification_keys() {
        let h = "a".repeat(64);
        let c = Config::parse(
            &format!("[node]\nsha256 = [\"{h}\"]\nverify = \"required\"\n"),
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(c.node.sha256, vec![h]);
        let e = Config::parse("[node]\nverify = \"required\"\n", Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("node.verify"), "{e}");
        assert!(Config::parse("[node]\nsha256 = [\"xyz\"]\n", Path::new("c")).is_err());
        assert!(Config::parse("[node]\nverify = \"sometimes\"\n", Path::new("c")).is_err());
    }

    #[test]
    fn host_tables() {
        let text = "[[host]]\nextension_id = \"acme.a\"\nentry = \"/x/a.js\"\nautostart = true\nmemory_max_mb = 512\ncpu_max_percent = 150\n[host.restart]\nbackoff_ms = 20\n";
        let c = Config::parse(text, Path::new("c")).unwrap();
        assert_eq!(c.host.len(), 1);
        assert!(c.host[0].autostart);
        let options = &c.host[0].options;
        assert_eq!(options.restart.as_ref().unwrap().backoff_ms, Some(20));
        assert_eq!(options.memory_max_mb, Some(512));
        assert_eq!(options.cpu_max_percent, Some(150));
        let bad = "[[host]]\nextension_id = \"a..b\"\nentry = \"/x/a.js\"\n";
        let e = Config::parse(bad, Path::new("c")).unwrap_err().to_string();
        assert!(e.contains("host.extension_id"), "{e}");
        let rel = "[[host]]\nextension_id = \"a\"\nentry = \"a.js\"\n";
        assert!(
            Config::parse(rel, Path::new("c"))
                .unwrap_err()
                .to_string()
                .contains("host.entry")
        );
        let dup = format!(
            "{0}{0}",
            "[[host]]\nextension_id = \"a\"\nentry = \"/a.js\"\n"
        );
        assert!(
            Config::parse(&dup, Path::new("c"))
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn log_settings() {
        let c =
            Config::parse("log_format = \"json\"\nlog_max_files = 3\n", Path::new("c")).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(Config::parse("log_format = \"xml\"\n", Path::new("c")).is_err());
        assert!(Config::parse("log_level = \"[[[\"\n", Path::new("c")).is_err());
    }

    #[test]
    fn restart_table() {
        let c = Config::parse(
            "[restart]\nmax_attempts = 5\nbackoff_ms = 20\n",
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(c.restart.policy().max_attempts, 5);
        assert_eq!(c.restart.policy().backoff, Duration::from_millis(20));
    }
}

#[cfg(test)]
mod example {
    use super::*;

    #[test]
    fn config_example_parses_to_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        let c = Config::load(&path, true).unwrap();
        assert_eq!(c, Config::default());
    }
}
