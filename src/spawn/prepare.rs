//! The blocking half of a start, run on a blocking thread before the fork:
//! open and verify Node (hashing a 100 MB binary the first time), build the
//! child's command line, environment and sandbox policy, hand the private
//! directories to `run_as`, make the private TMPDIR and the cgroups.
//!
//! It is given everything through a [`HostLaunch`], which the supervisor
//! builds from the host's spec and the daemon's settings at each start: this
//! layer knows nothing of either.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::containment::{CgroupRoots, Cgroups, Limits};
use super::{HostUser, LaunchSpec, SpawnError};

/// The sandbox profile a host runs under (Linux).
#[cfg(target_os = "linux")]
pub use crate::sandbox::SandboxPolicy;

/// Off Linux there is no sandbox profile to give a host.
#[cfg(not(target_os = "linux"))]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxPolicy;

/// Everything one host process is prepared from.
#[derive(Debug, Clone)]
pub struct HostLaunch {
    pub extension_id: Arc<str>,
    /// The Node binary (resolved) and its options, before the entry.
    pub node: PathBuf,
    pub node_args: Vec<String>,
    /// Whether and against what Node is verified.
    pub node_policy: crate::verify::NodePolicy,
    pub entry: PathBuf,
    pub args: Vec<String>,
    /// `None`: the entry's directory.
    pub cwd: Option<PathBuf>,
    /// The daemon's environment hosts may inherit (already filtered), then
    /// the variables passed through by name, then the host's own.
    pub base_env: BTreeMap<OsString, OsString>,
    pub pass_env: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// `DSCODE_RESOURCE_PATH`, if any.
    pub resource_path: Option<PathBuf>,
    /// The host's IPC sockets (`DSCODE_IPC_URL`, `DSCODE_INCOMING_IPC_URL`);
    /// the first one's directory is the host's own, writable to it.
    pub ipc_socket: PathBuf,
    pub ipc_incoming: PathBuf,
    /// The directory of every host's IPC directory, and the runtime
    /// directory above it (hidden from the strict profile).
    pub ipc_root: PathBuf,
    pub runtime_dir: PathBuf,
    /// `<state>/hosts/<id>/` holds its private TMPDIR; `None` leaves TMPDIR alone.
    pub state_dir: Option<PathBuf>,
    pub run_as: Option<HostUser>,
    /// The daemon's profile; the host's own directories are added to it.
    pub sandbox: SandboxPolicy,
    pub writable_paths: Vec<PathBuf>,
    pub storage_dir: Option<PathBuf>,
    pub cgroups: CgroupRoots,
    pub limits: Limits,
}

/// What the blocking half of a start produces.
#[derive(Debug)]
pub struct Prepared {
    pub launch: LaunchSpec,
    /// Made before the fork, joined by the child.
    pub cgroups: Cgroups,
}

/// Open and verify Node, build the launch spec, hand over the private
/// directories, make the cgroups. Blocking.
pub fn prepare(host: &HostLaunch) -> Result<Prepared, SpawnError> {
    let verified = if host.node_policy.active() {
        Some(crate::verify::open_verified(
            &host.node,
            &host.node_policy.sha256,
        )?)
    } else {
        None
    };
    let mut launch = launch_spec(host);
    launch.exec_fd = verified.map(|v| v.file);
    if let Some(user) = host.run_as {
        hand_over(host, user).map_err(|e| SpawnError::Exec {
            path: host.state_dir.clone().unwrap_or_default(),
            source: Arc::new(e),
        })?;
    }
    let cgroups = Cgroups::make(&host.extension_id, &host.cgroups, host.limits, &mut launch);
    #[cfg(debug_assertions)]
    test_hook_after_verify(&launch);
    Ok(Prepared { launch, cgroups })
}

/// The child's command line, environment and sandbox policy.
fn launch_spec(host: &HostLaunch) -> LaunchSpec {
    let id = &*host.extension_id;
    let mut env: BTreeMap<OsString, OsString> = host.base_env.clone();
    // Named explicitly by whoever started the host: past the allowlist.
    for name in &host.pass_env {
        if let Some(v) = std::env::var_os(name) {
            env.insert(name.into(), v);
        }
    }
    for (k, v) in &host.env {
        env.insert(k.into(), v.into());
    }
    env.insert(
        "DSCODE_IPC_URL".into(),
        format!("ipc://{}", host.ipc_socket.display()).into(),
    );
    env.insert(
        "DSCODE_INCOMING_IPC_URL".into(),
        format!("ipc://{}", host.ipc_incoming.display()).into(),
    );
    if let Some(rp) = &host.resource_path {
        env.insert("DSCODE_RESOURCE_PATH".into(), rp.clone().into_os_string());
    }
    if let Some(tmp) = private_tmp(id, host.state_dir.as_deref()) {
        env.insert("TMPDIR".into(), tmp.into_os_string());
    }
    let cwd = host.cwd.clone().unwrap_or_else(|| {
        host.entry
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| "/".into())
    });
    #[cfg(target_os = "linux")]
    let sandbox = {
        let mut policy = host.sandbox.clone();
        if let Some(state) = &host.state_dir {
            policy.writable.push(state.join("hosts").join(id));
        }
        if let Some(own) = host.ipc_socket.parent() {
            policy.writable.push(own.to_path_buf());
        }
        policy.writable.extend(host.writable_paths.iter().cloned());
        if let Some(storage) = &host.storage_dir {
            policy.writable.push(storage.clone());
        }
        // The strict profile hides the whole runtime directory: other
        // hosts' IPC directories and the control socket (a host must not
        // reach the control plane); its own IPC directory is bound back.
        policy.hidden.push(host.runtime_dir.clone());
        Some(policy)
    };
    LaunchSpec {
        node: host.node.clone(),
        node_args: host.node_args.clone(),
        entry: host.entry.clone(),
        args: host.args.clone(),
        cwd,
        env,
        exec_fd: None,
        #[cfg(target_os = "linux")]
        sandbox,
        #[cfg(target_os = "linux")]
        cgroup_procs: Vec::new(),
        #[cfg(target_os = "linux")]
        cgroup_dir: None,
        run_as: host.run_as,
    }
}

/// With `run_as`: the host's private directories belong to its user, and the
/// directories above them (state dir, runtime dir, the IPC root) let it pass
/// (0711) without letting it list or write them. Its IPC directory and
/// socket were handed over when they were bound.
fn hand_over(host: &HostLaunch, user: HostUser) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let traverse =
            |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711));
        if let Some(state) = &host.state_dir {
            let own = state.join("hosts").join(&*host.extension_id);
            traverse(state)?;
            traverse(&state.join("hosts"))?;
            for p in [own.clone(), own.join("tmp")] {
                if p.exists() {
                    user.own(&p)?;
                }
            }
        }
        traverse(&host.runtime_dir)?;
        traverse(&host.ipc_root)?;
    }
    let _ = (host, user);
    Ok(())
}

/// `<state>/hosts/<id>/tmp`, created 0700: the host's private TMPDIR.
fn private_tmp(id: &str, state_dir: Option<&Path>) -> Option<PathBuf> {
    let dir = state_dir?.join("hosts").join(id).join("tmp");
    match make_private_dir(&dir) {
        Ok(()) => Some(dir),
        Err(e) => {
            tracing::warn!(extension_id = %id, error = %e, dir = %dir.display(), "cannot create the host's TMPDIR");
            None
        }
    }
}

/// `mkdir -p` with 0700 for what it creates.
pub fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Test hook (debug builds only): run `$DSCODE_HOSTD_TEST_AFTER_VERIFY` after
/// the Node binary is verified and before it is executed, so a test can swap
/// the file in that window.
#[cfg(debug_assertions)]
fn test_hook_after_verify(spec: &LaunchSpec) {
    if spec.exec_fd.is_some()
        && let Some(cmd) = std::env::var_os("DSCODE_HOSTD_TEST_AFTER_VERIFY")
    {
        let _ = std::process::Command::new(cmd).arg(&spec.node).status();
    }
}
