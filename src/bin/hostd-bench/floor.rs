//! The request/response floor: a line echo server in a separate process,
//! and sequential round trips against any socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::daemon::Conn;

/// The floor for request/response: a line echo server, a separate process.
pub(crate) fn echo_server(path: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    for s in l.incoming() {
        let s = s?;
        std::thread::spawn(move || {
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if w.write_all(line.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

pub(crate) struct Echo {
    child: Child,
    pub(crate) path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Echo {
    pub(crate) fn start() -> anyhow::Result<Echo> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("echo.sock");
        let child = Command::new(std::env::current_exe()?)
            .arg("--echo-server")
            .arg(&path)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while UnixStream::connect(&path).is_err() {
            if Instant::now() > deadline {
                bail!("echo server did not start");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(Echo {
            child,
            path,
            _dir: dir,
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sequential round trips of one request line; sorted latencies in µs.
pub(crate) fn round_trips(socket: &Path, line: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut c = Conn::open(socket)?;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.send_line(line)?;
        c.read_line()?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(lat)
}
