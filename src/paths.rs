//! Where the daemon's files live, and the checks that keep the control socket
//! private.

use std::path::{Path, PathBuf};

/// Why a path could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error(
        "refusing to use {what} {path}: it is {problem}. \
         It must be owned by uid {uid} with mode 0700. Fix: {fix}"
    )]
    InsecureDir {
        /// "socket directory", "state directory", "log directory".
        what: &'static str,
        path: PathBuf,
        problem: String,
        uid: u32,
        fix: String,
    },
    #[error("cannot create directory {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot inspect {path}: {source}")]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make {path} private (chmod 700): {source}")]
    Chmod {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket path {path} has no parent directory")]
    NoParent { path: PathBuf },
    #[error(
        "another dscode-hostd is already running on socket {socket} (lock {lock} is held); \
         stop it first, or pass a different --socket"
    )]
    AlreadyRunning { socket: PathBuf, lock: PathBuf },
    #[error("cannot lock {lock}: {source}")]
    Lock {
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing to use socket path {path}: it is {kind}, not a socket a previous \
         dscode-hostd left behind, and it is not removed. Pass a --socket path that \
         does not exist (or is a stale socket)"
    )]
    NotASocket { path: PathBuf, kind: &'static str },
    #[error(
        "refusing to read config {path}: {problem}. A config file and its directory must \
         be owned by you (uid {uid}) or root and not writable by group or others. Fix: {fix}"
    )]
    UnsafeConfig {
        path: PathBuf,
        problem: String,
        uid: u32,
        fix: String,
    },
}

pub fn project_dirs() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("dev", "dscode", "dscode-hostd")
}

/// The user this daemon runs as.
#[cfg(unix)]
pub fn current_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The control socket: `--socket`, `$DSCODE_HOSTD_SOCKET`, config `socket`,
/// then [`default_socket`]. On Windows a named pipe
/// `\\.\pipe\dscode-hostd-<user>`. The daemon and every client resolve it
/// here, so they agree.
pub fn resolve_socket(cli: Option<&Path>, config: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("DSCODE_HOSTD_SOCKET").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = config {
        return p.to_path_buf();
    }
    default_socket()
}

/// The longest socket path used by default: `sun_path` holds 108 bytes on
/// Linux and 104 on macOS, with the terminating NUL.
#[cfg(unix)]
const MAX_SOCKET_PATH: usize = 100;

/// The default control socket, in a directory only this user can create:
/// `$XDG_RUNTIME_DIR/dscode-hostd/hostd.sock`, else
/// `<state home>/dscode-hostd/run/hostd.sock` (Linux:
/// `${XDG_STATE_HOME:-~/.local/state}/dscode-hostd/run/hostd.sock`). Never a
/// predictable name in a shared directory such as `/tmp`, which another user
/// could create first. Only without a home directory (or when that path is
/// too long for a socket) is it `/tmp/dscode-hostd-<uid>/hostd.sock`, whose
/// owner the daemon checks ([`ensure_private_dir`]).
#[cfg(unix)]
pub fn default_socket() -> PathBuf {
    if let Some(rt) =
        directories::BaseDirs::new().and_then(|b| b.runtime_dir().map(Path::to_path_buf))
    {
        return rt.join("dscode-hostd").join("hostd.sock");
    }
    if let Some(home) = home_state_dir() {
        let p = home.join("run").join("hostd.sock");
        if p.as_os_str().len() <= MAX_SOCKET_PATH {
            return p;
        }
    }
    PathBuf::from(format!("/tmp/dscode-hostd-{}", current_uid())).join("hostd.sock")
}

/// `~/.local/state/dscode-hostd` (or the platform's equivalent), if this
/// user has a home directory that exists (`nobody`'s is `/nonexistent`).
fn home_state_dir() -> Option<PathBuf> {
    directories::BaseDirs::new().filter(|b| b.home_dir().is_dir())?;
    project_dirs().map(|d| d.state_dir().unwrap_or(d.data_local_dir()).to_path_buf())
}

#[cfg(windows)]
pub fn default_socket() -> PathBuf {
    let user = std::env::var("USERNAME").unwrap_or_else(|_| "user".into());
    PathBuf::from(format!(r"\\.\pipe\dscode-hostd-{user}"))
}

/// `--state-dir`, else the platform state dir (`~/.local/state/dscode-hostd`),
/// else (no home directory) `<tmp>/dscode-hostd-state-<uid>`: never one
/// shared by users. Its owner and mode are checked by [`make_private_dir`].
pub fn resolve_state_dir(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    home_state_dir().unwrap_or_else(|| {
        #[cfg(unix)]
        let name = format!("dscode-hostd-state-{}", current_uid());
        #[cfg(not(unix))]
        let name = "dscode-hostd-state".to_string();
        std::env::temp_dir().join(name)
    })
}

/// What is wrong with `meta` for a private directory of ours, if anything.
#[cfg(unix)]
fn dir_problem(meta: &std::fs::Metadata, uid: u32) -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = meta.permissions().mode() & 0o7777;
    if meta.file_type().is_symlink() {
        Some("a symbolic link".to_string())
    } else if !meta.is_dir() {
        Some("not a directory".to_string())
    } else if meta.uid() != uid {
        Some(format!(
            "owned by uid {} (another user created it)",
            meta.uid()
        ))
    } else if mode & 0o077 != 0 {
        Some(format!("accessible to group or others (mode {mode:04o})"))
    } else {
        None
    }
}

/// Create `dir` 0700 if nothing is there (missing parents get the usual
/// mode: `~/.local` need not be private, `~/.local/state/dscode-hostd` is).
#[cfg(unix)]
fn create_private(dir: &Path) -> Result<(), PathError> {
    use std::os::unix::fs::DirBuilderExt;
    if std::fs::symlink_metadata(dir).is_ok() {
        return Ok(());
    }
    let err = |source| PathError::Create {
        path: dir.to_path_buf(),
        source,
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(err(e)),
        _ => Ok(()),
    }
}

#[cfg(unix)]
fn stat(path: &Path) -> Result<std::fs::Metadata, PathError> {
    std::fs::symlink_metadata(path).map_err(|source| PathError::Stat {
        path: path.to_path_buf(),
        source,
    })
}

/// Create `dir` (mode 0700) if missing, then insist it is ours and private
/// (the socket directory: a loose one is refused, not repaired).
#[cfg(unix)]
pub fn ensure_private_dir(dir: &Path) -> Result<(), PathError> {
    create_private(dir)?;
    let meta = stat(dir)?;
    let uid = current_uid();
    match dir_problem(&meta, uid) {
        Some(problem) => {
            let fix = if problem.starts_with("accessible") {
                format!(
                    "`chmod 700 {}` (or remove it and let dscode-hostd create it)",
                    dir.display()
                )
            } else {
                "pass --socket (or set DSCODE_HOSTD_SOCKET or XDG_RUNTIME_DIR) to a path \
                 in a directory you own; the owner of this one (or root) can remove it"
                    .to_string()
            };
            Err(PathError::InsecureDir {
                what: "socket directory",
                path: dir.to_path_buf(),
                problem,
                uid,
                fix,
            })
        }
        None => Ok(()),
    }
}

/// A directory the daemon writes private files into (its state directory,
/// its log directory): created 0700 if missing; if it is ours but open to
/// group or others, it is made 0700 (returns `true`: the caller logs it).
/// One owned by another user, a symlink or a non-directory is refused.
#[cfg(unix)]
pub fn make_private_dir(dir: &Path, what: &'static str) -> Result<bool, PathError> {
    use std::os::unix::fs::PermissionsExt;
    create_private(dir)?;
    let meta = stat(dir)?;
    let uid = current_uid();
    match dir_problem(&meta, uid) {
        None => Ok(false),
        Some(p) if p.starts_with("accessible") => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
                |source| PathError::Chmod {
                    path: dir.to_path_buf(),
                    source,
                },
            )?;
            Ok(true)
        }
        Some(problem) => Err(PathError::InsecureDir {
            what,
            path: dir.to_path_buf(),
            problem,
            uid,
            fix: "pass --state-dir (or set log_dir) to a directory you own; the owner of \
                  this one (or root) can remove it"
                .to_string(),
        }),
    }
}

/// Whether a config file may be trusted: the file and its directory (both
/// the one named and, through symlinks, the real one) are owned by this user
/// or root and not writable by group or others. Someone who can write the
/// config chooses what the daemon executes.
#[cfg(unix)]
pub fn check_config_file(path: &Path) -> Result<(), PathError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let uid = current_uid();
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut checks: Vec<(PathBuf, &str)> = vec![(real.clone(), "file")];
    for p in [path, real.as_path()] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
            if !checks.iter().any(|(c, _)| *c == dir) {
                checks.push((dir, "directory"));
            }
        }
    }
    for (p, kind) in checks {
        let meta = std::fs::metadata(&p).map_err(|source| PathError::Stat {
            path: p.clone(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        let problem = if meta.uid() != uid && meta.uid() != 0 {
            Some((
                format!("its {kind} {} is owned by uid {}", p.display(), meta.uid()),
                format!(
                    "keep the config in a {kind} you own (or `chown {uid} {}`)",
                    p.display()
                ),
            ))
        } else if mode & 0o022 != 0 {
            Some((
                format!(
                    "its {kind} {} is writable by group or others (mode {mode:04o})",
                    p.display()
                ),
                format!("`chmod go-w {}`", p.display()),
            ))
        } else {
            None
        };
        if let Some((problem, fix)) = problem {
            return Err(PathError::UnsafeConfig {
                path: path.to_path_buf(),
                problem,
                uid,
                fix,
            });
        }
    }
    Ok(())
}

/// Whether something exists at the socket path (`Ok(false)`: nothing), and
/// that it is a socket: only a socket is ever removed as stale.
#[cfg(unix)]
pub fn existing_socket(path: &Path) -> Result<bool, PathError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(PathError::Stat {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let t = meta.file_type();
    let kind = if t.is_socket() {
        return Ok(true);
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "a special file"
    };
    Err(PathError::NotASocket {
        path: path.to_path_buf(),
        kind,
    })
}

/// An exclusive `flock` on `hostd.lock` beside the socket, held for the
/// daemon's life.
#[cfg(unix)]
pub struct InstanceLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
    pub path: PathBuf,
}

#[cfg(unix)]
pub fn lock_instance(socket: &Path) -> Result<InstanceLock, PathError> {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::OpenOptionsExt;
    let dir = socket.parent().ok_or_else(|| PathError::NoParent {
        path: socket.to_path_buf(),
    })?;
    let path = dir.join("hostd.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| PathError::Lock {
            lock: path.clone(),
            source,
        })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(InstanceLock { _lock: lock, path }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(PathError::AlreadyRunning {
            socket: socket.to_path_buf(),
            lock: path,
        }),
        Err((_, e)) => Err(PathError::Lock {
            lock: path,
            source: e.into(),
        }),
    }
}

/// Whether a peer with effective uid `peer` may use a control socket of
/// `me`'s: the same user, or root. The daemon applies it to every client it
/// accepts, the client to the daemon it reaches.
pub fn peer_allowed(peer: u32, me: u32) -> bool {
    peer == me || peer == 0
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_dir_is_created_0700() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        ensure_private_dir(&d).unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn group_readable_dir_is_refused_with_the_fix() {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let err = ensure_private_dir(t.path()).unwrap_err().to_string();
        assert!(err.contains("chmod 700"), "{err}");
        assert!(err.contains(&t.path().display().to_string()), "{err}");
    }

    #[test]
    fn second_lock_fails() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("hostd.sock");
        let _a = lock_instance(&sock).unwrap();
        assert!(matches!(
            lock_instance(&sock),
            Err(PathError::AlreadyRunning { .. })
        ));
    }

    #[test]
    fn a_loose_state_dir_of_ours_is_made_private() {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(make_private_dir(t.path(), "state directory").unwrap());
        let mode = std::fs::metadata(t.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(!make_private_dir(t.path(), "state directory").unwrap());
        let link = t.path().join("link");
        std::os::unix::fs::symlink(t.path(), &link).unwrap();
        let err = make_private_dir(&link, "state directory").unwrap_err();
        assert!(err.to_string().contains("a symbolic link"), "{err}");
    }

    #[test]
    fn only_a_socket_counts_as_an_existing_socket() {
        let t = tempfile::tempdir().unwrap();
        assert!(!existing_socket(&t.path().join("none")).unwrap());
        let sock = t.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(existing_socket(&sock).unwrap());
        let file = t.path().join("notes.txt");
        std::fs::write(&file, "x").unwrap();
        let err = existing_socket(&file).unwrap_err().to_string();
        assert!(
            err.contains("a regular file") && err.contains("notes.txt"),
            "{err}"
        );
    }

    #[test]
    fn a_config_writable_by_others_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let cfg = t.path().join("config.toml");
        std::fs::write(&cfg, "").unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_config_file(&cfg).unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o620)).unwrap();
        let err = check_config_file(&cfg).unwrap_err().to_string();
        assert!(err.contains("chmod go-w"), "{err}");
    }

    #[test]
    fn the_default_socket_is_never_a_shared_tmp_name_when_there_is_a_home() {
        let p = default_socket();
        let has_home = directories::BaseDirs::new().is_some_and(|b| b.home_dir().is_dir());
        if has_home {
            assert!(!p.starts_with("/tmp"), "{}", p.display());
        }
        assert!(p.as_os_str().len() <= MAX_SOCKET_PATH || !has_home);
    }

    #[test]
    fn cli_beats_config() {
        let p = resolve_socket(Some(Path::new("/a.sock")), Some(Path::new("/b.sock")));
        assert_eq!(p, Path::new("/a.sock"));
    }

    #[test]
    fn only_self_and_root_are_allowed() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(!peer_allowed(65534, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(65534, 0));
    }
}
