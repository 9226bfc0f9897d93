//! The signals the daemon acts on ([`Signals`], turned into [`Trigger`]s for
//! [`super::run`]: TERM, INT, QUIT and XCPU stop it, HUP reloads, USR1
//! reopens the log file), and the ones whose default would kill it without
//! clean-up, which are caught, logged and otherwise ignored
//! (`ignored_signals`). On Windows: Ctrl-C, Ctrl-Break, console close and
//! system shutdown.

use anyhow::Context;
use futures_util::Stream;

use super::Trigger;
use super::logging::LogReopen;

// Windows has no SIGQUIT, SIGUSR1 or SIGXCPU.
#[cfg_attr(windows, allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sig {
    Term,
    Int,
    Hup,
    /// Graceful shutdown, like SIGTERM (not a core dump).
    Quit,
    /// Reopen the log file.
    Usr1,
    /// The soft CPU-time limit was reached; SIGKILL follows at the hard one:
    /// shut down gracefully while there is time.
    XCpu,
}

/// Signals whose default action would end the daemon without clean-up and
/// that mean nothing to it: caught and logged, so they cannot kill it.
/// (SIGPIPE is ignored by the Rust runtime; faults such as SIGSEGV, SIGBUS,
/// SIGILL, SIGFPE, SIGABRT, SIGTRAP and SIGSYS are left alone: they report
/// bugs.) Handlers, unlike `SIG_IGN`, are reset by `execve`, so hosts still
/// get the default dispositions.
#[cfg(unix)]
fn ignored_signals() -> Vec<(i32, String)> {
    // Extended below on Linux only.
    #[cfg_attr(
        not(any(target_os = "linux", target_os = "android")),
        allow(unused_mut)
    )]
    let mut v: Vec<(i32, String)> = vec![
        (libc::SIGUSR2, "SIGUSR2".into()),
        (libc::SIGALRM, "SIGALRM".into()),
        (libc::SIGVTALRM, "SIGVTALRM".into()),
        (libc::SIGPROF, "SIGPROF".into()),
        (libc::SIGIO, "SIGIO (SIGPOLL)".into()),
        (libc::SIGXFSZ, "SIGXFSZ".into()),
    ];
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        v.push((libc::SIGSTKFLT, "SIGSTKFLT".into()));
        v.push((libc::SIGPWR, "SIGPWR".into()));
        for n in libc::SIGRTMIN()..=libc::SIGRTMAX() {
            let name = if n == libc::SIGRTMIN() {
                "SIGRTMIN".to_string()
            } else {
                format!("SIGRTMIN+{}", n - libc::SIGRTMIN())
            };
            v.push((n, name));
        }
    }
    v
}

/// The signals the main loop acts on, as one stream; on Windows, Ctrl-C
/// (as SIGINT) and Ctrl-Break, console close and system shutdown (as
/// SIGTERM). The ones in [`ignored_signals`] are logged by tasks of their
/// own. The README's signal table lists them all.
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    quit: tokio::signal::unix::Signal,
    #[cfg(unix)]
    usr1: tokio::signal::unix::Signal,
    #[cfg(unix)]
    xcpu: tokio::signal::unix::Signal,
    #[cfg(unix)]
    ignored: Vec<tokio::task::JoinHandle<()>>,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
    #[cfg(windows)]
    ctrl_break: tokio::signal::windows::CtrlBreak,
    #[cfg(windows)]
    close: tokio::signal::windows::CtrlClose,
    #[cfg(windows)]
    shutdown: tokio::signal::windows::CtrlShutdown,
}

impl Signals {
    /// Install every handler; call this before the socket is bound, so that
    /// a SIGTERM during start-up shuts down cleanly instead of killing.
    pub fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut ignored = Vec::new();
            for (n, name) in ignored_signals() {
                match signal(SignalKind::from_raw(n)) {
                    Ok(mut s) => ignored.push(tokio::spawn(async move {
                        while s.recv().await.is_some() {
                            tracing::info!(signal = %name, "ignored a signal (it has no meaning to dscode-hostd)");
                        }
                    })),
                    // tokio keeps no slot for the very last real-time
                    // signal: a do-nothing handler keeps it harmless.
                    Err(_) => ignore_silently(n)
                        .with_context(|| format!("installing a handler for {name}"))?,
                }
            }
            Ok(Signals {
                term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
                int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
                hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
                quit: signal(SignalKind::quit()).context("installing SIGQUIT handler")?,
                usr1: signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?,
                xcpu: signal(SignalKind::from_raw(libc::SIGXCPU))
                    .context("installing SIGXCPU handler")?,
                ignored,
            })
        }
        #[cfg(windows)]
        {
            use tokio::signal::windows;
            Ok(Signals {
                ctrl_c: windows::ctrl_c().context("installing the Ctrl-C handler")?,
                ctrl_break: windows::ctrl_break().context("installing the Ctrl-Break handler")?,
                close: windows::ctrl_close().context("installing the console-close handler")?,
                shutdown: windows::ctrl_shutdown().context("installing the shutdown handler")?,
            })
        }
    }

    async fn next(&mut self) -> Sig {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => Sig::Term,
                _ = self.int.recv() => Sig::Int,
                _ = self.hup.recv() => Sig::Hup,
                _ = self.quit.recv() => Sig::Quit,
                _ = self.usr1.recv() => Sig::Usr1,
                _ = self.xcpu.recv() => Sig::XCpu,
            }
        }
        #[cfg(windows)]
        {
            tokio::select! {
                _ = self.ctrl_c.recv() => Sig::Int,
                _ = self.ctrl_break.recv() => Sig::Term,
                _ = self.close.recv() => Sig::Term,
                _ = self.shutdown.recv() => Sig::Term,
            }
        }
    }
}

#[cfg(unix)]
impl Drop for Signals {
    fn drop(&mut self) {
        for t in &self.ignored {
            t.abort();
        }
    }
}

/// A handler that does nothing, for a signal tokio cannot listen for.
#[cfg(unix)]
fn ignore_silently(n: i32) -> std::io::Result<()> {
    extern "C" fn nothing(_: libc::c_int) {}
    // SAFETY: all zeroes is a valid `sigaction` (no flags, an empty mask).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: the handler does nothing, so it is async-signal-safe; `sa`
    // outlives the call and the old action is not asked for.
    if unsafe { libc::sigaction(n, &raw const sa, std::ptr::null_mut()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Signals {
    /// What these signals ask of the daemon, as a stream for
    /// [`super::run`]. SIGUSR1 never reaches it: the log file is reopened
    /// here, at once.
    pub fn triggers(self, logs: LogReopen) -> impl Stream<Item = Trigger> {
        futures_util::stream::unfold(self, move |mut signals| {
            let logs = logs.clone();
            async move {
                loop {
                    let trigger = match signals.next().await {
                        Sig::Usr1 => {
                            logs.reopen_now();
                            continue;
                        }
                        Sig::Hup => Trigger::Reload,
                        Sig::Term => Trigger::Stop("SIGTERM"),
                        Sig::Int => Trigger::Stop("SIGINT"),
                        Sig::Quit => Trigger::Stop("SIGQUIT"),
                        Sig::XCpu => Trigger::Stop("SIGXCPU (CPU time limit)"),
                    };
                    return Some((trigger, signals));
                }
            }
        })
    }
}
