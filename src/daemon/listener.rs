//! The control socket before the daemon serves it: the socket systemd
//! passed (`LISTEN_FDS`: it must be a listening `AF_UNIX` stream socket), or
//! one bound here (0600, in a checked 0700 directory) after the instance
//! lock is taken and a dead daemon's stale socket reclaimed (a socket only,
//! and only when nothing answers on it). [`bind`] does all of it and hands
//! [`super::run`] a [`Bound`] listener, so tests can serve a socket of their
//! own in-process.

use std::path::{Path, PathBuf};

use anyhow::Context;
use interprocess::local_socket::{ListenerOptions, tokio::Listener};

use super::settings::Settings;
#[cfg(unix)]
use crate::paths;

/// A bound (or inherited) control socket, and the instance lock held for as
/// long as it is served.
pub struct Bound {
    pub(super) listener: Listener,
    /// The socket's path (on Windows, the pipe's name).
    pub(super) socket: PathBuf,
    /// Passed by the service manager: it owns the path, so the daemon never
    /// removes it.
    pub(super) activated: bool,
    #[cfg(unix)]
    _lock: paths::InstanceLock,
}

impl Bound {
    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether the service manager passed the socket.
    pub fn activated(&self) -> bool {
        self.activated
    }
}

/// Take the single-instance lock and the control socket: the one systemd
/// passed, else `settings.socket` bound here. The socket's directory must be
/// private (0700, ours) first.
pub fn bind(settings: &Settings) -> anyhow::Result<Bound> {
    let socket = settings.socket.clone();
    let inherited = inherited_listener()?;
    #[cfg(unix)]
    paths::ensure_private_dir(&settings.runtime_dir)?;
    #[cfg(unix)]
    let lock = paths::lock_instance(&socket)?;
    let activated = inherited.is_some();
    let listener = match inherited {
        Some(l) => l,
        None => bind_socket(&socket)?,
    };
    Ok(Bound {
        listener,
        socket,
        activated,
        #[cfg(unix)]
        _lock: lock,
    })
}

#[cfg(unix)]
fn bind_socket(socket: &Path) -> anyhow::Result<Listener> {
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
fn bind_socket(socket: &Path) -> anyhow::Result<Listener> {
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
