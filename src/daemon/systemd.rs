//! What the daemon tells its service manager: `sd_notify` (ready, reloading,
//! stopping, the watchdog and the STATUS= line kept current after each burst
//! of state changes). Off Unix, and when systemd is not listening
//! (`NOTIFY_SOCKET` unset), all of it is a no-op.

use std::sync::Arc;
use std::time::Duration;

use crate::supervisor::Supervisor;

/// What the daemon tells its service manager.
#[cfg_attr(not(unix), allow(dead_code))]
pub(super) enum Notice<'a> {
    /// Up (or reloaded); with a status line.
    Ready(&'a str),
    Reloading,
    Stopping,
    Watchdog,
    Status(&'a str),
}

/// Tell systemd (`sd_notify`), if it is listening.
#[cfg(unix)]
pub(super) fn notify(notice: Notice<'_>) {
    use sd_notify::NotifyState as S;
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut states = Vec::with_capacity(2);
    match notice {
        Notice::Ready(status) => states.extend([S::Ready, S::Status(status)]),
        Notice::Reloading => {
            states.push(S::Reloading);
            states.extend(S::monotonic_usec_now().ok());
        }
        Notice::Stopping => states.push(S::Stopping),
        Notice::Watchdog => states.push(S::Watchdog),
        Notice::Status(status) => states.push(S::Status(status)),
    }
    if let Err(e) = sd_notify::notify(&states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// No service-manager channel off Unix (the Windows service API is absent).
#[cfg(not(unix))]
pub(super) fn notify(_notice: Notice<'_>) {}

/// systemd's `WatchdogSec`, when set for this process.
fn watchdog_period() -> Option<Duration> {
    #[cfg(unix)]
    return sd_notify::watchdog_enabled();
    #[cfg(not(unix))]
    return None;
}

pub(super) fn status_line(supervisor: &Supervisor) -> String {
    let hosts = supervisor.list();
    let count = |s: crate::state::HostState| hosts.iter().filter(|h| h.state == s).count();
    use crate::state::HostState::*;
    format!(
        "{} hosts: {} running, {} restarting, {} crashed, {} stopped",
        hosts.len(),
        count(Running),
        count(Restarting) + count(Starting) + count(Unhealthy),
        count(Crashed),
        count(Stopped) + count(Stopping),
    )
}

/// Keep systemd's STATUS= current: after each burst of state changes.
pub(super) async fn report_status(supervisor: Arc<Supervisor>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut events = supervisor.subscribe(&None).events;
    loop {
        match events.recv().await {
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => return,
        }
        // Coalesce a burst into one update.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) =
            tokio::time::timeout_at(deadline, events.recv()).await
        {}
        let status = status_line(&supervisor);
        notify(Notice::Status(&status));
    }
}

/// Ping systemd's watchdog at half its period, when `WatchdogSec` is set.
pub(super) fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    watchdog_period().map(|period| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tick.tick().await;
                notify(Notice::Watchdog);
            }
        })
    })
}
