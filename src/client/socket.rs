//! Opening the control socket: on Unix nothing is sent to a socket another
//! user could control (its directory must be the caller's, 0700, and the
//! listener must run as the caller or root); on Windows, a named pipe.

use std::path::Path;

use interprocess::local_socket::tokio::Stream as LocalStream;
use interprocess::local_socket::traits::tokio::Stream as _;

use super::ClientError;

/// Connect, refusing a socket another user could control (see
/// [`Client::connect_with`](super::Client::connect_with)).
#[cfg(unix)]
pub(super) async fn connect_stream(socket: &Path) -> Result<LocalStream, ClientError> {
    use interprocess::local_socket::traits::StreamCommon as _;
    use interprocess::local_socket::{GenericFilePath, ToFsName};
    let connect_err = |source| ClientError::Connect {
        socket: socket.to_path_buf(),
        source,
    };
    let uid = crate::paths::current_uid();
    check_socket_dir(socket, uid)?;
    let name = socket
        .to_fs_name::<GenericFilePath>()
        .map_err(connect_err)?;
    let stream = LocalStream::connect(name).await.map_err(connect_err)?;
    // Who listens: the credentials the listening socket was created with.
    let peer = stream.peer_creds().map_err(connect_err)?.euid();
    match peer {
        Some(p) if crate::paths::peer_allowed(p, uid) => Ok(stream),
        _ => Err(ClientError::UntrustedPeer {
            socket: socket.to_path_buf(),
            peer,
            uid,
        }),
    }
}

/// The directory that really holds `socket` (symlinks resolved) must be
/// `uid`'s and 0700, or another user could have put the socket there.
#[cfg(unix)]
fn check_socket_dir(socket: &Path, uid: u32) -> Result<(), ClientError> {
    use std::os::unix::fs::MetadataExt;
    let connect_err = |source| ClientError::Connect {
        socket: socket.to_path_buf(),
        source,
    };
    // A missing socket or directory is the daemon not running.
    let real = std::fs::canonicalize(socket).map_err(connect_err)?;
    let dir = real.parent().unwrap_or(Path::new("/"));
    let meta = std::fs::metadata(dir).map_err(connect_err)?;
    let mode = meta.mode() & 0o7777;
    let problem = if meta.uid() != uid {
        "owned by another user"
    } else if mode & 0o077 != 0 {
        "accessible to group or others"
    } else {
        return Ok(());
    };
    Err(ClientError::InsecureSocketDir {
        socket: socket.to_path_buf(),
        dir: dir.to_path_buf(),
        problem,
        owner: meta.uid(),
        mode,
        uid,
    })
}

#[cfg(windows)]
pub(super) async fn connect_stream(socket: &Path) -> Result<LocalStream, ClientError> {
    use interprocess::local_socket::{GenericNamespaced, ToNsName};
    let connect_err = |source| ClientError::Connect {
        socket: socket.to_path_buf(),
        source,
    };
    let name = socket
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| connect_err(std::io::Error::other("bad pipe name")))?;
    let name = name
        .to_ns_name::<GenericNamespaced>()
        .map_err(connect_err)?;
    LocalStream::connect(name).await.map_err(connect_err)
}
