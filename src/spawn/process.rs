//! A host's process as the supervisor holds it, whichever way it was
//! spawned: its pid, its stdout and stderr (for the log pumps), and its
//! exit status.
//!
//! A process spawned by `clone3` (Linux, see [`super::clone3`]) is waited
//! for through the pidfd the clone returned: readable once it exits, then
//! `waitid(P_PIDFD)`; no pid is ever reused under it. One spawned by
//! `tokio::process::Command` (the fallback path, the strict profile,
//! macOS, Windows) delegates to tokio's `Child`.

use std::io;
use std::process::ExitStatus;

use tokio::io::AsyncRead;

/// A host's stdout or stderr, read by its log pump.
pub type Output = Box<dyn AsyncRead + Send + Unpin>;

/// One spawned host process.
pub struct HostProcess {
    /// Taken by the log pumps.
    pub stdout: Option<Output>,
    pub stderr: Option<Output>,
    pid: u32,
    inner: Inner,
}

enum Inner {
    Child(tokio::process::Child),
    #[cfg(target_os = "linux")]
    Pidfd(pidfd::Pidfd),
}

impl std::fmt::Debug for HostProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match &self.inner {
            Inner::Child(_) => "child",
            #[cfg(target_os = "linux")]
            Inner::Pidfd(_) => "pidfd",
        };
        f.debug_struct("HostProcess")
            .field("pid", &self.pid)
            .field("waited_by", &how)
            .finish()
    }
}

impl HostProcess {
    /// Wrap a tokio child (its stdout and stderr move here).
    pub fn from_child(mut child: tokio::process::Child, pid: u32) -> HostProcess {
        let stdout = child.stdout.take().map(|o| Box::new(o) as Output);
        let stderr = child.stderr.take().map(|e| Box::new(e) as Output);
        HostProcess {
            stdout,
            stderr,
            pid,
            inner: Inner::Child(child),
        }
    }

    /// A child of this process known by its pidfd, with the read ends of
    /// its stdout and stderr pipes. Needs the tokio runtime (registers the
    /// descriptors with its I/O driver).
    #[cfg(target_os = "linux")]
    pub(super) fn from_pidfd(
        pid: u32,
        pidfd: std::os::fd::OwnedFd,
        stdout: std::os::fd::OwnedFd,
        stderr: std::os::fd::OwnedFd,
    ) -> io::Result<HostProcess> {
        use tokio::net::unix::pipe::Receiver;
        let stdout = Receiver::from_owned_fd(stdout)?;
        let stderr = Receiver::from_owned_fd(stderr)?;
        // Last: a `Pidfd` that is dropped reaps the child in the background,
        // so nothing may fail after it (the caller reaps by pid on an error).
        let pidfd = pidfd::Pidfd::new(pidfd)?;
        Ok(HostProcess {
            stdout: Some(Box::new(stdout)),
            stderr: Some(Box::new(stderr)),
            pid,
            inner: Inner::Pidfd(pidfd),
        })
    }

    /// The process id (also its process group's id on Unix).
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Resolves once the process has exited (and is reaped). Cancel-safe;
    /// after it resolved it returns the same status again.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        match &mut self.inner {
            Inner::Child(c) => c.wait().await,
            #[cfg(target_os = "linux")]
            Inner::Pidfd(p) => p.wait().await,
        }
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match &mut self.inner {
            Inner::Child(c) => c.try_wait(),
            #[cfg(target_os = "linux")]
            Inner::Pidfd(p) => p.try_wait(),
        }
    }
}

#[cfg(target_os = "linux")]
mod pidfd {
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use tokio::io::unix::AsyncFd;

    /// A child waited for through its pidfd. Dropped before it was reaped,
    /// it is reaped in the background, by a task of the current runtime or,
    /// outside one, by a thread of its own (no zombie is left behind).
    pub(super) struct Pidfd {
        fd: Option<AsyncFd<OwnedFd>>,
        status: Option<ExitStatus>,
    }

    impl Pidfd {
        pub(super) fn new(fd: OwnedFd) -> io::Result<Pidfd> {
            // SAFETY: an OwnedFd's descriptor is valid, open and the same
            // for as long as the AsyncFd owns it.
            let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
            Ok(Pidfd {
                fd: Some(fd),
                status: None,
            })
        }

        pub(super) async fn wait(&mut self) -> io::Result<ExitStatus> {
            if let Some(s) = self.status {
                return Ok(s);
            }
            let fd = self.fd.as_ref().expect("only taken by drop");
            let status = reap(fd).await?;
            self.status = Some(status);
            Ok(status)
        }

        pub(super) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
            if let Some(s) = self.status {
                return Ok(Some(s));
            }
            let fd = self.fd.as_ref().expect("only taken by drop");
            self.status = try_reap(fd.get_ref())?;
            Ok(self.status)
        }
    }

    impl Drop for Pidfd {
        fn drop(&mut self) {
            if self.status.is_some() {
                return;
            }
            let Some(fd) = self.fd.take() else { return };
            if !matches!(try_reap(fd.get_ref()), Ok(None)) {
                return;
            }
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        let _ = reap(&fd).await;
                    });
                }
                Err(_) => {
                    let fd = fd.into_inner();
                    let _ = std::thread::Builder::new()
                        .name("hostd-reap".into())
                        .spawn(move || waitid(&fd, libc::WEXITED));
                }
            }
        }
    }

    /// Wait for the pidfd to turn readable (the process exited), then reap.
    async fn reap(fd: &AsyncFd<OwnedFd>) -> io::Result<ExitStatus> {
        loop {
            if let Some(s) = try_reap(fd.get_ref())? {
                return Ok(s);
            }
            let mut ready = fd.readable().await?;
            match try_reap(fd.get_ref())? {
                Some(s) => return Ok(s),
                None => ready.clear_ready(),
            }
        }
    }

    /// `waitid(P_PIDFD, fd, WEXITED | WNOHANG)`: the status as `wait(2)`
    /// would have given it, or `None` while the process runs.
    fn try_reap(fd: &OwnedFd) -> io::Result<Option<ExitStatus>> {
        waitid(fd, libc::WEXITED | libc::WNOHANG)
    }

    /// `waitid(P_PIDFD, fd, options)`: the status, or `None` while the
    /// process runs (`WNOHANG`); without `WNOHANG` it blocks until the exit.
    fn waitid(fd: &OwnedFd, options: libc::c_int) -> io::Result<Option<ExitStatus>> {
        // SAFETY: an all-zero siginfo_t is a valid value (plain integers).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: waitid writes into `info`, which we own, and reads
            // nothing else; the pidfd is open for as long as `fd` lives.
            let r = unsafe {
                libc::waitid(
                    libc::P_PIDFD,
                    fd.as_raw_fd() as libc::id_t,
                    &mut info,
                    options,
                )
            };
            if r == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        // SAFETY: waitid filled in a SIGCHLD siginfo (or left it zeroed:
        // si_pid 0 says the child has not exited), whose pid and status
        // fields these read.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        let raw = match info.si_code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_KILLED => status & 0x7f,
            libc::CLD_DUMPED => (status & 0x7f) | 0x80,
            _ => return Err(io::Error::other("waitid: not an exit")),
        };
        Ok(Some(ExitStatus::from_raw(raw)))
    }
}
