//! The daemon's TOML configuration.
//!
//! Every key has a default, so an empty file (or none) is a valid config.
//! Unknown keys are errors, so a typo never silently does nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::supervisor::RestartPolicy;

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

/// See `config.example.toml` for every key with its default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    /// Node binary; when unset, the bundled/`DSCODE_RESOURCE_PATH`/`PATH` search.
    pub node: Option<PathBuf>,
    /// Default SIGTERM-to-SIGKILL grace for `host.stop`.
    pub stop_timeout_ms: u64,
    /// Output lines kept per host for `host.logs`.
    pub log_lines: usize,
    /// Default restart policy.
    pub restart: RestartConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: None,
            max_message_bytes: 1024 * 1024,
            max_connections: 128,
            max_requests_per_connection: 64,
            node: None,
            stop_timeout_ms: 5000,
            log_lines: 1000,
            restart: RestartConfig::default(),
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

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                reason: reason.to_string(),
            })
        };
        if self.max_message_bytes < 1024 {
            return invalid("max_message_bytes", "must be at least 1024");
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1");
        }
        if self.max_requests_per_connection == 0 {
            return invalid("max_requests_per_connection", "must be at least 1");
        }
        if self.log_lines == 0 {
            return invalid("log_lines", "must be at least 1");
        }
        if self.restart.max_backoff_ms < self.restart.backoff_ms {
            return invalid(
                "restart.max_backoff_ms",
                "must not be below restart.backoff_ms",
            );
        }
        Ok(())
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
