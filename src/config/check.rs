//! The checks a parsed config must pass beyond its types: ranges, ids,
//! paths, combinations. Each failure names its key.

use std::path::Path;

use super::{Config, ConfigError, SandboxProfile};
use crate::supervisor::validate_extension_id;

impl Config {
    pub(super) fn check(&self, path: &Path) -> Result<(), ConfigError> {
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
        if self.ipc_max_message_bytes < 1024 || self.ipc_max_message_bytes > u32::MAX as usize {
            return invalid(
                "ipc_max_message_bytes",
                "must be between 1024 and 4294967295",
            );
        }
        let day = crate::supervisor::MAX_SETTING_MS;
        for (key, v) in [
            ("stop_timeout_ms", self.stop_timeout_ms),
            ("ready_timeout_ms", self.ready_timeout_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("heartbeat_timeout_ms", self.heartbeat_timeout_ms),
            ("restart.backoff_ms", self.restart.backoff_ms),
            ("restart.max_backoff_ms", self.restart.max_backoff_ms),
            ("restart.stable_after_ms", self.restart.stable_after_ms),
        ] {
            if v > day {
                return invalid(key, &format!("must be at most {day} (a day)"));
            }
        }
        if !(1..=3_600_000).contains(&self.host_request_timeout_ms) {
            return invalid("host_request_timeout_ms", "must be between 1 and 3600000");
        }
        if self.host_request_queue_max == 0 || self.host_request_queue_max > 65_536 {
            return invalid("host_request_queue_max", "must be between 1 and 65536");
        }
        if self.host_request_queue_bytes < 1024 {
            return invalid("host_request_queue_bytes", "must be at least 1024");
        }
        if let Err(e) = crate::supervisor::static_answers(&self.static_answers) {
            return invalid("static_answers", &e);
        }
        if let Some(user) = &self.sandbox.run_as {
            if self.sandbox.profile == SandboxProfile::Strict {
                return invalid(
                    "sandbox.run_as",
                    "is not supported with profile = \"strict\" (bwrap would need to run unprivileged); use the default profile",
                );
            }
            if let Err(e) = crate::spawn::HostUser::lookup(user) {
                return invalid("sandbox.run_as", &e);
            }
        }
        if self.sandbox.max_open_files.is_some_and(|n| n < 18) {
            return invalid(
                "sandbox.max_open_files",
                "must be at least 18 (Node needs that many to start)",
            );
        }
        if self.sandbox.max_old_space_mb == Some(0) {
            return invalid("sandbox.max_old_space_mb", "must be at least 1");
        }
        if self.node.verify == crate::verify::VerifyMode::Required && self.node.sha256.is_empty() {
            return invalid("node.verify", "is \"required\" but node.sha256 is empty");
        }
        if let Some(h) = self
            .node
            .sha256
            .iter()
            .find(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return invalid(
                "node.sha256",
                &format!("{h:?} is not a 64-digit hex sha256"),
            );
        }
        if self.log_max_files == 0 {
            return invalid("log_max_files", "must be at least 1");
        }
        if self.log_max_bytes < 64 * 1024 {
            return invalid("log_max_bytes", "must be at least 65536");
        }
        let most = crate::supervisor::MAX_LOG_RATE;
        if self.log_rate_lines > most || self.log_rate_bytes > most {
            return invalid(
                "log_rate_lines",
                &format!("log rates must be at most {most}"),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return invalid("log_level", &format!("is not a valid filter: {e}"));
        }
        let mut seen = std::collections::HashSet::new();
        for h in &self.host {
            let id = &h.extension_id;
            let problem = if let Err(e) = validate_extension_id(id) {
                Some(("host.extension_id", format!("{id:?}: {e}")))
            } else if !seen.insert(id.as_str()) {
                Some(("host.extension_id", format!("{id:?} is declared twice")))
            } else if let Some(entry) = h.options.entry.as_deref()
                && !entry.is_absolute()
            {
                Some((
                    "host.entry",
                    format!("{} (host {id}) must be an absolute path", entry.display()),
                ))
            } else if h
                .options
                .env
                .iter()
                .flat_map(|env| env.keys())
                .any(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
            {
                Some((
                    "host.env",
                    format!("host {id}: keys must be non-empty, without '=' or NUL"),
                ))
            } else if let Some(Err(e)) = h
                .options
                .static_answers
                .as_ref()
                .map(crate::supervisor::static_answers)
            {
                Some(("host.static_answers", format!("host {id}: {e}")))
            } else {
                None
            };
            if let Some((key, reason)) = problem {
                return invalid(key, &reason);
            }
        }
        Ok(())
    }
}
