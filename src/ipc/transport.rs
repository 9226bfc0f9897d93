//! The OS channel under a [`Session`](super::SessionHandle): a Unix socket
//! (0600, in a 0700 directory, peer uid checked) or, on Windows, a named
//! pipe (`\\.\pipe\<name>`, as DSCode hosts expect there).
//!
//! The Windows half compiles (`cargo check --target x86_64-pc-windows-gnu`)
//! but has never run: see `SECURITY.md`.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The per-host IPC sockets under the runtime dir: where the host listens
/// (`DSCODE_IPC_URL`) and where the daemon listens
/// (`DSCODE_INCOMING_IPC_URL`). Named by a hash of the id so they fit the
/// 108-byte Unix socket path limit.
///
/// Each host has its own 0700 directory, `<runtime>/ipc/<hash>/`, and only
/// that one is writable in its sandbox: a host can neither remove nor
/// replace another host's sockets.
#[cfg(unix)]
pub fn ipc_paths(runtime_dir: &Path, extension_id: &str) -> (PathBuf, PathBuf) {
    let dir = ipc_root(runtime_dir).join(short_hash(extension_id.as_bytes()));
    (dir.join("host.sock"), dir.join("daemon.sock"))
}

/// Remove a host's IPC directory and the sockets in it (when the host is
/// removed, at rest). Named pipes have no directory: nothing to do there.
pub fn remove_host_dir(runtime_dir: &Path, extension_id: &str) {
    #[cfg(unix)]
    if let Some(dir) = ipc_paths(runtime_dir, extension_id).0.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    #[cfg(windows)]
    let _ = (runtime_dir, extension_id);
}

/// The directory holding every host's IPC directory.
pub fn ipc_root(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("ipc")
}

/// Named pipes live in one machine-wide namespace: the daemon's identity
/// (its control pipe's full name, which `daemon::Settings` passes as the runtime
/// dir on Windows) goes into the name, so two users' daemons never collide.
#[cfg(windows)]
pub fn ipc_paths(runtime_dir: &Path, extension_id: &str) -> (PathBuf, PathBuf) {
    let daemon = short_hash(runtime_dir.as_os_str().as_encoded_bytes());
    let short = short_hash(extension_id.as_bytes());
    let pipe =
        |side: &str| PathBuf::from(format!(r"\\.\pipe\dscode-hostd-{daemon}-{short}.{side}"));
    (pipe("host"), pipe("daemon"))
}

fn short_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(unix)]
pub type Stream = tokio::net::UnixStream;

#[cfg(windows)]
pub type Stream = interprocess::local_socket::tokio::Stream;

/// The daemon's listening end for one host process.
pub struct Listener {
    #[cfg(unix)]
    inner: tokio::net::UnixListener,
    #[cfg(windows)]
    inner: interprocess::local_socket::tokio::Listener,
    path: PathBuf,
}

/// Create the 0700 directory, clear stale files and bind `incoming` (0600).
#[cfg(unix)]
pub fn bind(incoming: &Path, host: &Path) -> io::Result<Listener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = incoming.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    for p in [incoming, host] {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let inner = tokio::net::UnixListener::bind(incoming)?;
    std::fs::set_permissions(incoming, std::fs::Permissions::from_mode(0o600))?;
    Ok(Listener {
        inner,
        path: incoming.to_path_buf(),
    })
}

/// Create the pipe `incoming` (the default DACL: the creating user, SYSTEM
/// and administrators).
#[cfg(windows)]
pub fn bind(incoming: &Path, _host: &Path) -> io::Result<Listener> {
    use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
    let inner = ListenerOptions::new()
        .name(incoming.to_fs_name::<GenericFilePath>()?)
        .create_tokio()?;
    Ok(Listener {
        inner,
        path: incoming.to_path_buf(),
    })
}

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Runs as this daemon's user.
    pub same_user: bool,
    /// Its pid, where the OS tells (`SO_PEERCRED`).
    pub pid: Option<i32>,
    /// Its uid, where the OS tells.
    pub uid: Option<u32>,
}

/// Who is at the other end of a Unix socket connection.
#[cfg(unix)]
fn peer_of(s: &Stream) -> Peer {
    match s.peer_cred() {
        Ok(c) => Peer {
            same_user: c.uid() == nix::unistd::geteuid().as_raw(),
            pid: c.pid(),
            uid: Some(c.uid()),
        },
        Err(_) => Peer {
            same_user: false,
            pid: None,
            uid: None,
        },
    }
}

impl Listener {
    /// The next connection, and who made it.
    pub async fn accept(&self) -> io::Result<(Stream, Peer)> {
        #[cfg(unix)]
        {
            let (s, _) = self.inner.accept().await?;
            let peer = peer_of(&s);
            Ok((s, peer))
        }
        #[cfg(windows)]
        {
            use interprocess::local_socket::traits::tokio::Listener as _;
            // The pipe's DACL admits only this user (and SYSTEM, admins).
            let s = self.inner.accept().await?;
            Ok((
                s,
                Peer {
                    same_user: true,
                    pid: None,
                    uid: None,
                },
            ))
        }
    }

    /// Stop listening and remove the socket file (a pipe goes with its
    /// handle).
    pub fn close(self) {
        let Listener { inner, path } = self;
        drop(inner);
        if cfg!(unix) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Whether process `pid` is in process group `pgid` (Unix; elsewhere there
/// is no group to check, and the answer is yes).
pub fn in_group(pid: i32, pgid: i32) -> bool {
    #[cfg(unix)]
    {
        use nix::unistd::{Pid, getpgid};
        getpgid(Some(Pid::from_raw(pid))).is_ok_and(|g| g.as_raw() == pgid)
    }
    #[cfg(not(unix))]
    {
        let _ = (pid, pgid);
        true
    }
}

/// Connect to the socket (or pipe) the host listens on, and say who serves
/// it (on Unix, the process that made the listening socket).
pub async fn connect(path: &Path) -> io::Result<(Stream, Peer)> {
    #[cfg(unix)]
    {
        let s = tokio::net::UnixStream::connect(path).await?;
        let peer = peer_of(&s);
        Ok((s, peer))
    }
    #[cfg(windows)]
    {
        use interprocess::local_socket::traits::tokio::Stream as _;
        use interprocess::local_socket::{GenericFilePath, ToFsName};
        let s = Stream::connect(path.to_fs_name::<GenericFilePath>()?).await?;
        Ok((
            s,
            Peer {
                same_user: true,
                pid: None,
                uid: None,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn group_membership_is_read_from_the_kernel() {
        let me = std::process::id() as i32;
        let mine = nix::unistd::getpgrp().as_raw();
        assert!(in_group(me, mine));
        assert!(!in_group(me, mine + 1));
        assert!(!in_group(i32::MAX, mine), "no such process");
    }

    #[test]
    fn ipc_names_are_short_and_distinct_per_host() {
        let run = Path::new("/run/user/1000/dscode-hostd");
        let (h1, d1) = ipc_paths(run, "acme.one");
        let (h2, _) = ipc_paths(run, "acme.two");
        assert_ne!(h1, d1);
        assert_ne!(h1, h2);
        // One directory per host, under the shared root.
        assert_eq!(h1.parent(), d1.parent());
        assert_ne!(h1.parent(), h2.parent());
        assert_eq!(h1.parent().unwrap().parent().unwrap(), ipc_root(run));
        // sun_path holds 108 bytes, NUL included.
        assert!(h1.as_os_str().len() < 108, "{}", h1.display());
        let long = "x".repeat(500);
        assert_eq!(
            ipc_paths(run, &long).0.as_os_str().len(),
            h1.as_os_str().len()
        );
    }
}
