//! A file-system watch as an async event (Linux inotify on the runtime's
//! reactor): what the daemon waits on instead of polling a file.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// One inotify watch on one path.
pub struct Watch {
    fd: AsyncFd<Fd>,
}

impl Watch {
    pub fn new(path: &Path, flags: AddWatchFlags) -> io::Result<Watch> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(path, flags)?;
        // SAFETY: `Fd` owns the inotify descriptor: it stays open, and
        // `as_raw_fd` returns that same descriptor, for as long as the
        // `AsyncFd` that owns the `Fd` lives.
        let fd =
            unsafe { AsyncFd::register_with_interest(Fd(inotify), tokio::io::Interest::READABLE) }?;
        Ok(Watch { fd })
    }

    /// Resolves when at least one event has arrived since the last call
    /// (the events themselves are consumed, not returned).
    pub async fn changed(&self) -> io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.get_inner().0.read_events() {
                Ok(events) if !events.is_empty() => return Ok(()),
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}
