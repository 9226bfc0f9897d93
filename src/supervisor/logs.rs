//! The bounded per-host ring of output lines that `host.logs` serves, and the
//! tasks that fill it from a child's stdout and stderr.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncRead;
use tokio::sync::broadcast;
use tokio_util::codec::Decoder;

use crate::lines::{BoundedLines, Line};
pub use crate::protocol::{LogLine, Stream};

/// How much output a host may produce: lines and bytes a second (0: no
/// limit), with a burst of two seconds' worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRate {
    pub lines_per_sec: u64,
    pub bytes_per_sec: u64,
}

impl Default for LogRate {
    fn default() -> Self {
        LogRate {
            lines_per_sec: 1000,
            bytes_per_sec: 1024 * 1024,
        }
    }
}

/// Burst, in seconds of the rate.
const BURST_SECS: f64 = 2.0;

/// A token bucket for one host process's output (stdout and stderr share
/// it), counting what it drops.
#[derive(Debug)]
pub struct Limiter {
    rate: LogRate,
    lines: f64,
    bytes: f64,
    last: std::time::Instant,
    dropped: u64,
    /// When the last marker was due: at most one a second.
    last_report: Option<std::time::Instant>,
}

/// How often a marker may report dropped lines.
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What to do with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Keep it; `dropped` lines were dropped before it (say so first: at
    /// most once a second, the rest is reported later).
    Pass {
        dropped: u64,
    },
    Drop,
}

impl Limiter {
    pub fn new(rate: LogRate) -> Self {
        Limiter {
            rate,
            lines: rate.lines_per_sec as f64 * BURST_SECS,
            bytes: rate.bytes_per_sec as f64 * BURST_SECS,
            last: std::time::Instant::now(),
            dropped: 0,
            last_report: None,
        }
    }

    pub fn admit(&mut self, len: usize, now: std::time::Instant) -> Admit {
        let secs = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let refill = |tokens: &mut f64, per_sec: u64| {
            *tokens = (*tokens + secs * per_sec as f64).min(per_sec as f64 * BURST_SECS);
        };
        refill(&mut self.lines, self.rate.lines_per_sec);
        refill(&mut self.bytes, self.rate.bytes_per_sec);
        let lines_ok = self.rate.lines_per_sec == 0 || self.lines >= 1.0;
        let bytes_ok = self.rate.bytes_per_sec == 0 || self.bytes >= len as f64;
        if lines_ok && bytes_ok {
            if self.rate.lines_per_sec > 0 {
                self.lines -= 1.0;
            }
            if self.rate.bytes_per_sec > 0 {
                self.bytes -= len as f64;
            }
            let due = self
                .last_report
                .is_none_or(|t| now.saturating_duration_since(t) >= REPORT_EVERY);
            let dropped = if due && self.dropped > 0 {
                self.last_report = Some(now);
                std::mem::take(&mut self.dropped)
            } else {
                0
            };
            Admit::Pass { dropped }
        } else {
            self.dropped += 1;
            Admit::Drop
        }
    }

    /// Whether a line could pass now (refilling first); when not, a reader
    /// may drop what it has in bulk ([`Limiter::dropped_in_bulk`]).
    pub fn open(&mut self, now: std::time::Instant) -> bool {
        let secs = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let refill = |tokens: &mut f64, per_sec: u64| {
            *tokens = (*tokens + secs * per_sec as f64).min(per_sec as f64 * BURST_SECS);
        };
        refill(&mut self.lines, self.rate.lines_per_sec);
        refill(&mut self.bytes, self.rate.bytes_per_sec);
        (self.rate.lines_per_sec == 0 || self.lines >= 1.0)
            && (self.rate.bytes_per_sec == 0 || self.bytes >= 1.0)
    }

    /// `n` lines were dropped without being looked at.
    pub fn dropped_in_bulk(&mut self, n: u64) {
        self.dropped += n;
    }

    /// Lines dropped and not yet reported (at the end of the output).
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

pub type SharedLimiter = Arc<Mutex<Limiter>>;

/// How long a reader over its host's rate waits before reading again.
const OVER_RATE_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// The line that says how many were dropped.
fn dropped_marker(n: u64) -> String {
    format!("… {n} lines dropped (over the host's log rate limit)")
}

/// Lines a follower may fall behind before it is told it lagged.
pub const FOLLOW_QUEUE: usize = 1024;

/// A ring of at most `cap` lines, and the live feed of new ones.
#[derive(Debug)]
pub struct LogRing {
    lines: VecDeque<Arc<LogLine>>,
    cap: usize,
    /// Created on the first follower, so idle hosts cost nothing.
    feed: Option<broadcast::Sender<Arc<LogLine>>>,
}

impl LogRing {
    pub fn new(cap: usize) -> Self {
        Self {
            lines: VecDeque::with_capacity(cap.min(64)),
            cap: cap.max(1),
            feed: None,
        }
    }

    pub fn push(&mut self, line: LogLine) {
        let line = Arc::new(line);
        if let Some(feed) = &self.feed
            && feed.receiver_count() > 0
        {
            let _ = feed.send(line.clone());
        }
        if self.lines.len() == self.cap {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// The newest `n` lines and a receiver of every later one, with no gap
    /// and no overlap between the two.
    /// The tail shares the ring's lines: no text is copied.
    pub fn follow(&mut self, n: usize) -> (Vec<Arc<LogLine>>, broadcast::Receiver<Arc<LogLine>>) {
        let rx = self
            .feed
            .get_or_insert_with(|| broadcast::channel(FOLLOW_QUEUE).0)
            .subscribe();
        let skip = self.lines.len().saturating_sub(n);
        (self.lines.iter().skip(skip).cloned().collect(), rx)
    }

    /// The newest `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let skip = self.lines.len().saturating_sub(n);
        self.lines
            .iter()
            .skip(skip)
            .map(|l| (**l).clone())
            .collect()
    }
}

pub type SharedLogRing = Arc<Mutex<LogRing>>;

/// A tail (shared with the ring) and the receiver of every later line.
pub type Follow = (Vec<Arc<LogLine>>, broadcast::Receiver<Arc<LogLine>>);

/// Read `pipe` line by line until EOF: each line (cut at `max_line` bytes)
/// goes to tracing with the extension id and into the ring, as far as
/// `limiter` lets it; a marker line says how many were dropped.
pub async fn pump<R: AsyncRead + Unpin>(
    pipe: R,
    stream: Stream,
    extension_id: Arc<str>,
    ring: SharedLogRing,
    max_line: usize,
    limiter: SharedLimiter,
) {
    let emit = |text: String| {
        match stream {
            Stream::Stdout => {
                tracing::info!(target: "host", extension_id = %extension_id, stream = "stdout", "{text}")
            }
            Stream::Stderr => {
                tracing::warn!(target: "host", extension_id = %extension_id, stream = "stderr", "{text}")
            }
        }
        let line = LogLine {
            stream,
            text,
            at: crate::time::rfc3339_now(),
        };
        ring.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    };
    // Read by hand rather than through `FramedRead`: while the host is over
    // its rate, every complete line in a read is dropped in one pass
    // (counting newlines), not decoded one by one.
    let mut pipe = pipe;
    let mut codec = BoundedLines::new(max_line);
    let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
    let mut eof = false;
    loop {
        let frame = match codec.decode(&mut buf) {
            Ok(Some(line)) => Some(line),
            Ok(None) if eof => codec.decode_eof(&mut buf).ok().flatten(),
            Ok(None) => None,
            Err(_) => None,
        };
        let Some(frame) = frame else {
            if eof {
                break;
            }
            if buf.capacity() - buf.len() < 8 * 1024 {
                buf.reserve(64 * 1024);
            }
            match tokio::io::AsyncReadExt::read_buf(&mut pipe, &mut buf).await {
                Ok(0) => eof = true,
                Ok(_) => {
                    let over = {
                        let mut l = limiter.lock().unwrap_or_else(|p| p.into_inner());
                        let over = !l.open(std::time::Instant::now());
                        if over {
                            let n = codec.skip_complete(&mut buf);
                            l.dropped_in_bulk(n);
                        }
                        over
                    };
                    if over {
                        // Over its rate: read a full pipe at a time, not
                        // every write (the host waits on the full pipe
                        // meanwhile, which slows the flood at its source).
                        tokio::time::sleep(OVER_RATE_PAUSE).await;
                    }
                }
                Err(e) => {
                    tracing::debug!(extension_id = %extension_id, error = %e, "host pipe read failed");
                    eof = true;
                }
            }
            continue;
        };
        let (bytes, cut) = match frame {
            Line::Complete(b) => (b, false),
            Line::TooLong(b) => (b, true),
        };
        let admit = limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(bytes.len(), std::time::Instant::now());
        let Admit::Pass { dropped } = admit else {
            continue;
        };
        if dropped > 0 {
            emit(dropped_marker(dropped));
        }
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if cut {
            text.push('…');
        }
        emit(text);
    }
    let dropped = limiter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take_dropped();
    if dropped > 0 {
        emit(dropped_marker(dropped));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(t: &str) -> LogLine {
        LogLine {
            stream: Stream::Stdout,
            text: t.into(),
            at: String::new(),
        }
    }

    #[test]
    fn ring_keeps_the_newest() {
        let mut r = LogRing::new(3);
        for i in 0..5 {
            r.push(line(&i.to_string()));
        }
        let t: Vec<_> = r.tail(10).into_iter().map(|l| l.text).collect();
        assert_eq!(t, ["2", "3", "4"]);
        let t: Vec<_> = r.tail(2).into_iter().map(|l| l.text).collect();
        assert_eq!(t, ["3", "4"]);
    }

    #[test]
    fn follow_sees_every_line_after_its_tail() {
        let mut r = LogRing::new(10);
        r.push(line("a"));
        r.push(line("b"));
        let (tail, mut rx) = r.follow(1);
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].text, "b");
        r.push(line("c"));
        assert_eq!(rx.try_recv().unwrap().text, "c");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn the_bucket_passes_a_burst_then_the_rate_and_counts_what_it_drops() {
        let t0 = std::time::Instant::now();
        let mut l = Limiter::new(LogRate {
            lines_per_sec: 10,
            bytes_per_sec: 0,
        });
        // A burst of two seconds' worth: 20 lines.
        let passed = (0..100)
            .filter(|_| matches!(l.admit(10, t0), Admit::Pass { .. }))
            .count();
        assert_eq!(passed, 20);
        // 80 dropped; a second later the next line passes and reports them.
        let later = t0 + std::time::Duration::from_secs(1);
        assert_eq!(l.admit(10, later), Admit::Pass { dropped: 80 });
        // Bytes: 100 B/s, burst 200 B.
        let mut b = Limiter::new(LogRate {
            lines_per_sec: 0,
            bytes_per_sec: 100,
        });
        assert_eq!(b.admit(150, t0), Admit::Pass { dropped: 0 });
        assert_eq!(b.admit(100, t0), Admit::Drop);
        assert_eq!(b.take_dropped(), 1);
        // No limit at all.
        let mut n = Limiter::new(LogRate {
            lines_per_sec: 0,
            bytes_per_sec: 0,
        });
        assert!((0..10_000).all(|_| n.admit(1 << 20, t0) != Admit::Drop));
    }

    #[tokio::test]
    async fn pump_cuts_long_lines() {
        let ring = Arc::new(Mutex::new(LogRing::new(10)));
        let data: &[u8] = b"short\nabcdefghij\nlast";
        let limiter = Arc::new(Mutex::new(Limiter::new(LogRate::default())));
        pump(data, Stream::Stderr, "x".into(), ring.clone(), 4, limiter).await;
        let t: Vec<_> = ring
            .lock()
            .unwrap()
            .tail(10)
            .into_iter()
            .map(|l| l.text)
            .collect();
        assert_eq!(t, ["shor…", "abcd…", "last"]);
    }
}
