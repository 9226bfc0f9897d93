//! The daemon's own logs: stderr (the journal under systemd) and a daily
//! 0600 file the daemon writes itself ([`LogFile`]), reopened on SIGUSR1
//! through [`LogReopen`]. Host output lines (tracing target `host`) go to
//! either or both, as `host_output` says.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use anyhow::Context;

use super::settings::LogSettings;
use crate::config::LogFormat;
#[cfg(unix)]
use crate::paths;

/// Keep this alive for as long as logs should reach the file.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// What [`init_logging`] set up.
pub struct Logging {
    /// Flushes the file on drop.
    pub guard: LogGuard,
    /// The log directory.
    pub dir: PathBuf,
    /// Asks the file writer to reopen its file (SIGUSR1).
    pub reopen: LogReopen,
}

/// A handle that makes the log file writer reopen its file before its next
/// write: after `logrotate` (or a person) renamed or removed it, logging
/// goes on in a new file of the same name.
#[derive(Debug, Clone, Default)]
pub struct LogReopen(Arc<AtomicBool>);

impl LogReopen {
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// SIGUSR1: the next log line goes to a freshly opened file.
    pub fn reopen_now(&self) {
        self.request();
        tracing::info!(signal = "SIGUSR1", "reopened the log file");
    }
}

/// Log to stderr (the journal under systemd) and to a daily file in
/// `log.dir` (default: the state directory), keeping `log.max_files`. The
/// directory is 0700 and the files 0600, whatever the umask.
pub fn init_logging(log: &LogSettings) -> anyhow::Result<Logging> {
    use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let dir = log.dir.clone();
    #[cfg(unix)]
    let what = if log.dir_configured {
        "log directory"
    } else {
        "state directory"
    };
    #[cfg(unix)]
    let tightened = paths::make_private_dir(&dir, what)?;
    #[cfg(not(unix))]
    let tightened = {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating log dir {}", dir.display()))?;
        false
    };
    let reopen = LogReopen::default();
    let mut log_file = LogFile {
        dir: dir.clone(),
        max_files: log.max_files,
        max_bytes: log.max_bytes,
        written: 0,
        current: None,
        reopen: reopen.clone(),
    };
    log_file
        .open()
        .with_context(|| format!("opening a log file in {}", dir.display()))?;
    let (file, guard) = tracing_appender::non_blocking(log_file);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (stderr_layer, file_layer) = match log.format {
        LogFormat::Text => (
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .boxed(),
            tracing_subscriber::fmt::layer()
                .with_writer(file)
                .with_ansi(false)
                .boxed(),
        ),
        LogFormat::Json => (
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .boxed(),
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(file)
                .boxed(),
        ),
    };
    // Host output (target "host") goes where `host_output` says, once.
    use crate::config::HostOutput;
    use tracing_subscriber::filter::{FilterExt, filter_fn};
    let to_stderr = matches!(log.host_output, HostOutput::Stderr | HostOutput::Both);
    let to_file = matches!(log.host_output, HostOutput::File | HostOutput::Both);
    // The level filters can be swapped at a reload (`set_level`).
    let (stderr_filter, stderr_level) = tracing_subscriber::reload::Layer::new(filter());
    let (file_filter, file_level) = tracing_subscriber::reload::Layer::new(filter());
    tracing_subscriber::registry()
        .with(
            stderr_layer.with_filter(
                stderr_filter.and(filter_fn(move |m| to_stderr || m.target() != "host")),
            ),
        )
        .with(
            file_layer
                .with_filter(file_filter.and(filter_fn(move |m| to_file || m.target() != "host"))),
        )
        .try_init()
        .context("installing the tracing subscriber")?;
    let from_env = std::env::var_os(EnvFilter::DEFAULT_ENV).is_some();
    let _ = LEVEL.set(Level {
        from_env,
        set: Box::new(move |level: &str| {
            let new = || EnvFilter::try_new(level);
            stderr_level
                .reload(new().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            file_level
                .reload(new().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())
        }),
    });
    if tightened {
        tracing::warn!(dir = %dir.display(), "the log directory was open to group or others: made it 0700 (its files are 0600)");
    }
    Ok(Logging { guard, dir, reopen })
}

/// Swaps the level filters of the installed subscriber.
type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The installed subscriber's level filters, for a reload.
struct Level {
    /// `RUST_LOG` was set: it wins over `log_level`, now and at reloads.
    from_env: bool,
    set: SetLevel,
}

static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();

/// Apply a reloaded `log_level` to the running subscriber. Does nothing
/// when `RUST_LOG` set the level or no subscriber was installed by
/// [`init_logging`] (tests that run the daemon in-process).
pub fn set_level(level: &str) {
    let Some(l) = LEVEL.get() else { return };
    if l.from_env {
        tracing::info!(
            log_level = level,
            "RUST_LOG is set: it keeps deciding the level"
        );
        return;
    }
    match (l.set)(level) {
        Ok(()) => tracing::info!(log_level = level, "log level changed"),
        Err(e) => tracing::warn!(log_level = level, error = %e, "could not change the log level"),
    }
}

const LOG_PREFIX: &str = "dscode-hostd.";
const LOG_SUFFIX: &str = ".log";

/// The daily log file `<dir>/dscode-hostd.YYYY-MM-DD.log` (UTC dates, as
/// tracing-appender named them before): created 0600 whatever the umask,
/// at most `max_files` kept (0: all), a new one each day, and reopened when
/// [`LogReopen`] asks. tracing-appender's own rolling writer can neither set
/// a mode nor reopen.
struct LogFile {
    dir: PathBuf,
    max_files: usize,
    /// Past this many bytes the file is renamed aside and a new one begun.
    max_bytes: u64,
    /// Bytes in the open file.
    written: u64,
    /// The date and the open file.
    current: Option<(String, std::fs::File)>,
    reopen: LogReopen,
}

impl LogFile {
    fn today() -> String {
        let mut d = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        d.truncate(10);
        d
    }

    fn open(&mut self) -> std::io::Result<()> {
        let date = Self::today();
        let name = format!("{LOG_PREFIX}{date}{LOG_SUFFIX}");
        self.prune(&name);
        let mut options = std::fs::OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
        }
        let file = options.open(self.dir.join(&name))?;
        // A file an older version created keeps its mode: set it.
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        self.written = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.current = Some((date, file));
        Ok(())
    }

    /// The open file is full: rename it aside (a name that sorts after the
    /// day's earlier files and before its current one) and begin a new one.
    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some((date, f)) = self.current.take() {
            drop(f);
            let nanos = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let from = self.dir.join(format!("{LOG_PREFIX}{date}{LOG_SUFFIX}"));
            let to = self
                .dir
                .join(format!("{LOG_PREFIX}{date}.{nanos:020}{LOG_SUFFIX}"));
            // If it cannot be renamed, the same file goes on (over its size).
            let _ = std::fs::rename(from, to);
        }
        self.open()
    }

    /// Delete the oldest log files so that, with `keep` about to be opened,
    /// at most `max_files` remain; make the others 0600.
    fn prune(&self, keep: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut old: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(LOG_PREFIX) && n.ends_with(LOG_SUFFIX) && n != keep)
            .collect();
        old.sort();
        let excess = if self.max_files == 0 {
            0
        } else {
            old.len().saturating_sub(self.max_files - 1)
        };
        for n in &old[..excess] {
            let _ = std::fs::remove_file(self.dir.join(n));
        }
        // Files an older version wrote with the umask's mode.
        #[cfg(unix)]
        for n in &old[excess..] {
            use std::os::unix::fs::PermissionsExt;
            let p = self.dir.join(n);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
            }
        }
    }
}

impl std::io::Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let stale = match &self.current {
            Some((date, _)) => *date != Self::today(),
            None => true,
        };
        if self.reopen.0.swap(false, Ordering::SeqCst) || stale {
            if let Some((_, f)) = &mut self.current {
                let _ = f.flush();
            }
            if let Err(e) = self.open() {
                if self.current.is_none() {
                    return Err(e);
                }
                // Out of descriptors, say: keep the old file, and try
                // again at the next line.
                self.reopen.request();
            }
        }
        if self.max_bytes > 0
            && self.written > 0
            && self.written + buf.len() as u64 > self.max_bytes
            && let Err(e) = self.rotate()
            && self.current.is_none()
        {
            return Err(e);
        }
        match &mut self.current {
            Some((_, f)) => {
                let n = f.write(buf)?;
                self.written += n as u64;
                Ok(n)
            }
            None => Err(std::io::Error::other("no log file")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.current {
            Some((_, f)) => f.flush(),
            None => Ok(()),
        }
    }
}
