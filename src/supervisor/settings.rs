//! The settings every host gets, from the config: [`SupervisorConfig`] (a
//! reload swaps it; actors read it at each start), where cgroups are made
//! ([`CgroupRoots`]) and the environment hosts may inherit ([`allowed_env`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::logs;
use super::messages;
use super::spec::{IpcPolicy, RestartPolicy};
pub use crate::spawn::CgroupRoots;

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
    pub sandbox: crate::spawn::SandboxPolicy,
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
            sandbox: Default::default(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
