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

/// One inotify watch on one path, on an instance of its own. Dropping it
/// closes that instance on a blocking thread: closing an inotify instance
/// waits for an SRCU grace period (10–40 ms measured here), which must not
/// stall a runtime thread and every actor queued behind it.
pub struct Watch {
    /// `None` only while dropping.
    fd: Option<AsyncFd<Fd>>,
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
        Ok(Watch { fd: Some(fd) })
    }

    /// Resolves when at least one event has arrived since the last call
    /// (the events themselves are consumed, not returned).
    pub async fn changed(&self) -> io::Result<()> {
        let fd = self.fd.as_ref().expect("set until dropped");
        loop {
            let mut ready = fd.readable().await?;
            match ready.get_inner().0.read_events() {
                Ok(events) if !events.is_empty() => return Ok(()),
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let Some(fd) = self.fd.take() else { return };
        // Off the reactor first, then closed where waiting costs nothing.
        let inotify = fd.into_inner();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || drop(inotify))),
            Err(_) => drop(inotify),
        }
    }
}

/// Many directory watches on one inotify instance (the per-user instance
/// limit is 128 by default; a watch per host would exhaust it and starve
/// the cgroup watches). A background task reads the events and wakes the
/// watch each is for.
struct Shared {
    fd: AsyncFd<Fd>,
    waiters: std::sync::Mutex<
        std::collections::HashMap<
            nix::sys::inotify::WatchDescriptor,
            std::sync::Arc<tokio::sync::Notify>,
        >,
    >,
}

fn shared() -> Option<std::sync::Arc<Shared>> {
    static SHARED: std::sync::OnceLock<Option<std::sync::Arc<Shared>>> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| {
            let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
            // SAFETY: as in `Watch::new`: `Fd` owns the descriptor for as
            // long as the `AsyncFd` lives (here: the process's life).
            let fd = unsafe {
                AsyncFd::register_with_interest(Fd(inotify), tokio::io::Interest::READABLE)
            }
            .ok()?;
            let shared = std::sync::Arc::new(Shared {
                fd,
                waiters: Default::default(),
            });
            let reader = shared.clone();
            tokio::spawn(async move {
                loop {
                    let Ok(mut ready) = reader.fd.readable().await else {
                        return;
                    };
                    match ready.get_inner().0.read_events() {
                        Ok(events) => {
                            let waiters = reader.waiters.lock().unwrap_or_else(|p| p.into_inner());
                            for e in events {
                                if let Some(n) = waiters.get(&e.wd) {
                                    n.notify_one();
                                }
                            }
                        }
                        Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                        Err(e) => {
                            tracing::warn!(error = %e, "the shared inotify watch failed");
                            return;
                        }
                    }
                }
            });
            Some(shared)
        })
        .clone()
}

/// A watch on one directory through the daemon's shared inotify instance.
pub struct DirWatch {
    shared: std::sync::Arc<Shared>,
    wd: nix::sys::inotify::WatchDescriptor,
    notify: std::sync::Arc<tokio::sync::Notify>,
}

impl DirWatch {
    /// Needs a tokio runtime (the first call starts the reader task).
    pub fn new(dir: &Path, flags: AddWatchFlags) -> io::Result<DirWatch> {
        let shared = shared().ok_or_else(|| io::Error::other("no inotify"))?;
        let wd = shared.fd.get_ref().0.add_watch(dir, flags)?;
        let notify = std::sync::Arc::new(tokio::sync::Notify::new());
        shared
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(wd, notify.clone());
        Ok(DirWatch { shared, wd, notify })
    }

    /// Resolves at the next event in the directory (or at once if one came
    /// since the last call).
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        self.shared
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.wd);
        let _ = self.shared.fd.get_ref().0.rm_watch(self.wd);
    }
}
