//! Starting `dscode-hostd` with what `common::Daemon` cannot set: a umask,
//! resource limits, an inherited descriptor, another uid, a chosen
//! environment. Used next to `mod common;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{daemon_bin, fixture, kill_marker_processes, new_marker, require_node};

/// A daemon started by [`launch`]; killed (with its hosts) on drop.
pub struct Launched {
    pub child: Child,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub marker: String,
}

/// What to change in the daemon's process before it runs.
#[derive(Default, Clone)]
pub struct Setup {
    /// `umask(2)` in the child.
    pub umask: Option<u32>,
    /// Soft and hard RLIMIT_NOFILE in the child.
    pub nofile: Option<u64>,
    /// `dup2` this descriptor to fd 3 and set LISTEN_FDS=1 and LISTEN_PID
    /// to the daemon's pid, as systemd does (through `sh -c 'exec'`, which
    /// keeps the pid).
    pub listen_fd: Option<i32>,
    /// Run it as `nobody` (uid and gid 65534) through `setpriv`.
    pub as_nobody: bool,
    /// Variables removed from its environment.
    pub remove_env: Vec<&'static str>,
}

/// The usual arguments for a daemon in `dir`: `--socket <dir>/run/hostd.sock
/// --state-dir <dir>/state --config <dir>/config.toml` (the config written
/// here, allowing the fixtures to write into `dir`).
pub fn args_in(dir: &Path, config: &str) -> Vec<std::ffi::OsString> {
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let cfg = dir.join("config.toml");
    let mut text = config.to_string();
    if !text.contains("[sandbox]") {
        text.push_str(&format!(
            "\n[sandbox]\nwritable_paths = [\"{}\"]\n",
            dir.display()
        ));
    }
    std::fs::write(&cfg, text).unwrap();
    vec![
        "--socket".into(),
        run.join("hostd.sock").into(),
        "--state-dir".into(),
        dir.join("state").into(),
        "--config".into(),
        cfg.into(),
    ]
}

/// Start the daemon with `args`, the environment `env` on top of a
/// hermetic base (`XDG_CONFIG_HOME` in `dir`, no socket or notify
/// variables), and `setup` applied in the child.
pub fn launch(
    dir: &Path,
    args: &[std::ffi::OsString],
    env: &[(&str, &str)],
    setup: Setup,
) -> Launched {
    require_node();
    let mut cmd = if setup.as_nobody {
        let mut c = Command::new(which::which("setpriv").expect("setpriv (util-linux)"));
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        c
    } else if setup.listen_fd.is_some() {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"");
        c
    } else {
        Command::new(daemon_bin())
    };
    if setup.as_nobody || setup.listen_fd.is_some() {
        cmd.arg(daemon_bin());
    }
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env("XDG_CONFIG_HOME", dir.join("xdg-config"))
        .env_remove("DSCODE_HOSTD_SOCKET")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in &setup.remove_env {
        cmd.env_remove(k);
    }
    let Setup {
        umask,
        nofile,
        listen_fd,
        ..
    } = setup;
    // SAFETY: only async-signal-safe calls (umask, setrlimit, dup2) run
    // in the forked child, on values copied in before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(m) = umask {
                libc::umask(m as libc::mode_t);
            }
            if let Some(n) = nofile {
                let lim = libc::rlimit {
                    rlim_cur: n as libc::rlim_t,
                    rlim_max: n as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = listen_fd
                && libc::dup2(fd, 3) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn dscode-hostd");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let err = child.stderr.take().unwrap();
    let lines = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("[hostd] {line}");
            lines.lock().unwrap().push(line);
        }
    });
    Launched {
        child,
        stderr,
        marker: new_marker(),
    }
}

impl Launched {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Wait until a stderr line contains `needle`, or fail (also when the
    /// daemon exits first).
    pub async fn wait_for_log(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.log_text().contains(needle) {
                return;
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the reader thread catch up with the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert!(
                    self.log_text().contains(needle),
                    "daemon exited ({st}) without logging {needle:?}:\n{}",
                    self.log_text()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon never logged {needle:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// How many stderr lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Wait for the daemon to exit, at most `within`; its exit status and
    /// everything it wrote to stderr.
    pub async fn wait_exit(&mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return (status, self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {within:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `host.start` params for a fixture, with this daemon's marker.
    pub fn start_params(&self, id: &str, fixture_name: &str) -> serde_json::Value {
        serde_json::json!({
            "extensionId": id,
            "entry": fixture(fixture_name),
            "env": { "HOSTD_TEST_MARKER": self.marker },
        })
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        kill_marker_processes(&self.marker);
    }
}

/// A fresh 0700 directory under /tmp.
pub fn temp_dir() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::Builder::new()
        .prefix("hostd")
        .tempdir_in("/tmp")
        .unwrap();
    let p = t.path().to_path_buf();
    (t, p)
}

/// The mode bits of `path` (not following a symlink).
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `chmod(2)`, whatever the umask.
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `utime + stime` of `pid` in clock ticks, from `/proc/<pid>/stat`.
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, so utime (14) is index 11.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Clock ticks per second.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(n).unwrap_or(100)
}

/// Send `sig` (any number, real-time ones included) to `pid`.
pub fn send(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory effects; a gone pid is an error we
    // do not need.
    unsafe {
        libc::kill(pid, sig);
    }
}
