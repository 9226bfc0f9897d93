//! Following a subscription (`watch`, `logs -f`) until Ctrl-C or SIGTERM,
//! the reader of stdout going away, or the daemon going away.

use dscode_hostd::client::ClientError;
use futures_util::StreamExt;

use crate::Failure;

/// Print each item of a subscription until `interrupted` (Ctrl-C or
/// SIGTERM: exit 0), the reader of stdout goes away (exit 0), or the daemon
/// does (exit 3). No timeout: a quiet host or daemon is not a dead one.
pub(crate) async fn stream_until<T>(
    interrupted: impl std::future::Future<Output = ()>,
    mut stream: dscode_hostd::client::Events<T>,
    mut print: impl FnMut(T) -> Result<(), Failure>,
) -> Result<(), Failure>
where
    T: serde::de::DeserializeOwned,
{
    tokio::pin!(interrupted);
    let closed = stdout_closed();
    tokio::pin!(closed);
    loop {
        let item = tokio::select! {
            i = stream.next() => i,
            () = &mut interrupted => return Ok(()),
            () = &mut closed => return Err(Failure::StdoutClosed),
        };
        match item {
            Some(Ok(item)) => print(item)?,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ClientError::Disconnected.into()),
        }
    }
}

/// Resolves when stdout is a pipe whose reader has gone away (`watch |
/// head -1` after its line), so a follower that has nothing to print does
/// not linger; never for a terminal or a file (a write there reports a
/// closed pipe anyway).
fn stdout_closed() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use std::os::unix::fs::FileTypeExt;
        use tokio::io::Interest;
        use tokio::io::unix::AsyncFd;
        let pipe = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map(std::fs::File::from)
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.file_type().is_fifo()));
        // The write end of a pipe reports EPOLLERR once no reader is left.
        let registered = pipe.and_then(|f| {
            // SAFETY: the File owns its descriptor (a dup of stdout) and moves
            // into the AsyncFd, so the fd stays open and refers to the same
            // pipe until the AsyncFd is dropped.
            unsafe { AsyncFd::register_with_interest(f, Interest::ERROR) }.ok()
        });
        if let Some(fd) = registered {
            return Box::pin(async move {
                let _ = fd.ready(Interest::ERROR).await;
            });
        }
    }
    Box::pin(std::future::pending())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when
/// this is called, so a signal that arrives while output is being printed is
/// not lost.
pub(crate) fn interrupted() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => std::future::pending().await,
            }
        }
    }
    #[cfg(windows)]
    {
        let ctrl_c = tokio::signal::windows::ctrl_c();
        async move {
            match ctrl_c {
                Ok(mut c) => {
                    c.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        }
    }
}
