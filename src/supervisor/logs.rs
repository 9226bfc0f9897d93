//! The bounded per-host ring of output lines that `host.logs` serves, and the
//! tasks that fill it from a child's stdout and stderr.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;
use tokio::sync::broadcast;
use tokio_util::codec::FramedRead;

use crate::lines::{BoundedLines, Line};

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One captured line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    pub stream: Stream,
    pub text: String,
    /// RFC 3339.
    pub at: String,
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

/// Read `pipe` line by line until EOF: each line (cut at `max_line` bytes) goes
/// to tracing with the extension id and into the ring.
pub async fn pump<R: AsyncRead + Unpin>(
    pipe: R,
    stream: Stream,
    extension_id: Arc<str>,
    ring: SharedLogRing,
    max_line: usize,
) {
    let mut frames = FramedRead::new(pipe, BoundedLines::new(max_line));
    while let Some(frame) = frames.next().await {
        let (bytes, cut) = match frame {
            Ok(Line::Complete(b)) => (b, false),
            Ok(Line::TooLong(b)) => (b, true),
            Err(e) => {
                tracing::debug!(extension_id = %extension_id, error = %e, "host pipe read failed");
                break;
            }
        };
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if cut {
            text.push('…');
        }
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

    #[tokio::test]
    async fn pump_cuts_long_lines() {
        let ring = Arc::new(Mutex::new(LogRing::new(10)));
        let data: &[u8] = b"short\nabcdefghij\nlast";
        pump(data, Stream::Stderr, "x".into(), ring.clone(), 4).await;
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
