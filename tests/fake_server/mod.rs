//! Stand-ins for a daemon that misbehaves, for the client's and the CLI's
//! tests: one that never answers, one that floods an endless line, one whose
//! socket belongs to another user, and a forwarder (a `socat` stand-in).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// The uid and gid the other-user cases use (`nobody`).
pub const OTHER_UID: u32 = 65534;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A fresh 0700 directory under /tmp (short, for socket paths).
pub fn private_dir() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("hostctl")
        .tempdir_in("/tmp")
        .unwrap();
    set_mode(t.path(), 0o700);
    t
}

pub fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Accepts connections and never answers; each connection's bytes are
/// read and counted (sent on the channel when the client closes).
pub fn silent_server(socket: &Path) -> mpsc::Receiver<usize> {
    let listener = UnixListener::bind(socket).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = conn.read_to_end(&mut sink);
                let _ = tx.send(sink.len());
            });
        }
    });
    rx
}

/// Accepts one connection, reads the request line, then writes `bytes`
/// bytes of one line that never ends and keeps the connection open until
/// the client closes it. The channel gets how many bytes were written.
pub fn flooding_server(socket: &Path, bytes: usize) -> mpsc::Receiver<usize> {
    let listener = UnixListener::bind(socket).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((conn, _)) = listener.accept() else {
            return;
        };
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut request = String::new();
        let _ = reader.read_line(&mut request);
        let mut conn = conn;
        let chunk = vec![b'x'; 1 << 20];
        let mut written = 0;
        while written < bytes {
            let n = chunk.len().min(bytes - written);
            if conn.write_all(&chunk[..n]).is_err() {
                break;
            }
            written += n;
        }
        // Hold the line open (no newline, no EOF) until the client leaves.
        let _ = reader.read_to_end(&mut Vec::new());
        let _ = tx.send(written);
    });
    rx
}

/// A listening socket at `socket` whose listener credentials (what
/// `SO_PEERCRED` tells a client) are uid/gid `uid`: bound here, then
/// `listen()` again in a child that switched to `uid` first (Linux takes
/// the peer credentials from the last `listen()`). Needs root.
pub fn listener_of_another_uid(socket: &Path, uid: u32) -> UnixListener {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let listener = UnixListener::bind(socket).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = std::process::Command::new("true");
    // SAFETY: only async-signal-safe raw syscalls (setgid, setuid, listen)
    // run in the forked child before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 || libc::listen(fd, 16) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "the other-uid child failed: {status}");
    listener
}

/// Whether `listener` has a connection waiting; if so, every byte the
/// client sent on it (read to EOF, at most 10 s).
pub fn pending_connection(listener: &UnixListener) -> Option<Vec<u8>> {
    listener.set_nonblocking(true).unwrap();
    let (mut conn, _) = listener.accept().ok()?;
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got)
        .expect("the client neither sent nor closed within 10 s");
    Some(got)
}

/// Forwards every connection on `socket` to `target`, as
/// `socat UNIX-LISTEN:socket,fork UNIX-CONNECT:target` would.
pub fn forwarder(socket: &Path, target: PathBuf) {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(a) = conn else { return };
            let Ok(b) = UnixStream::connect(&target) else {
                return;
            };
            let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
            let (mut a, mut b) = (a, b);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut a, &mut b);
                let _ = b.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut b2, &mut a2);
                let _ = a2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

/// Wait for a child, at most `within`; its exit code and peak resident set
/// (`ru_maxrss`, bytes).
pub fn wait_with_peak_rss(child: std::process::Child, within: Duration) -> (Option<i32>, u64) {
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value; wait4 fills it in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child with valid out-pointers. Reaping it
        // here leaves `child` unwaited, which is harmless (its Drop does
        // not wait).
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
        let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        let _ = tx.send((code, usage.ru_maxrss as u64 * 1024));
    });
    match rx.recv_timeout(within) {
        Ok(r) => {
            drop(child);
            r
        }
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("process {pid} did not exit within {within:?}");
        }
    }
}
