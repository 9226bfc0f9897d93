//! A newline-delimited frame decoder with a hard memory bound.
//!
//! Used twice: by the control socket (one JSON-RPC message per line, where an
//! over-long line is refused) and by the host output readers (one log line per
//! line, where an over-long line is cut). Either way the buffer never holds
//! much more than `max` bytes: once a line passes the limit, its first `max`
//! bytes are handed out as [`Line::TooLong`] and everything up to the next
//! newline is dropped as it arrives.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A whole line, without its `\n` (and without a `\r` before it).
    Complete(BytesMut),
    /// A line longer than the limit: its first `max` bytes. The rest of the
    /// line is skipped.
    TooLong(BytesMut),
}

/// See the module documentation.
#[derive(Debug)]
pub struct BoundedLines {
    max: usize,
    /// How far the current buffer has been searched for `\n` already.
    scanned: usize,
    /// Inside an over-long line: drop bytes until the next `\n`.
    discarding: bool,
}

impl BoundedLines {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            scanned: 0,
            discarding: false,
        }
    }
}

impl BoundedLines {
    /// Drop every complete line in `src` at once (up to its last `\n`),
    /// returning how many: the fast path of a reader that is discarding
    /// (a log flood over its rate). A partial last line stays.
    pub fn skip_complete(&mut self, src: &mut BytesMut) -> u64 {
        let Some(last) = src.iter().rposition(|b| *b == b'\n') else {
            return 0;
        };
        let mut n = src[..=last].iter().filter(|b| **b == b'\n').count() as u64;
        if self.discarding {
            // That newline ends a line already handed out (cut).
            n -= 1;
            self.discarding = false;
        }
        src.advance(last + 1);
        self.scanned = 0;
        n
    }
}

fn strip_eol(mut line: BytesMut) -> BytesMut {
    if line.last() == Some(&b'\n') {
        line.truncate(line.len() - 1);
    }
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    line
}

impl Decoder for BoundedLines {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Line>, Self::Error> {
        loop {
            if self.discarding {
                match src.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        src.advance(i + 1);
                        self.discarding = false;
                        continue;
                    }
                    None => {
                        src.clear();
                        return Ok(None);
                    }
                }
            }
            let from = self.scanned.min(src.len());
            if let Some(i) = src[from..].iter().position(|b| *b == b'\n') {
                let end = from + i;
                self.scanned = 0;
                if end > self.max {
                    let mut line = src.split_to(end + 1);
                    line.truncate(self.max);
                    return Ok(Some(Line::TooLong(line)));
                }
                return Ok(Some(Line::Complete(strip_eol(src.split_to(end + 1)))));
            }
            if src.len() > self.max {
                let prefix = src.split_to(self.max);
                src.clear();
                self.scanned = 0;
                self.discarding = true;
                return Ok(Some(Line::TooLong(prefix)));
            }
            self.scanned = src.len();
            return Ok(None);
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Line>, Self::Error> {
        if let Some(line) = self.decode(src)? {
            return Ok(Some(line));
        }
        self.scanned = 0;
        if self.discarding {
            src.clear();
            self.discarding = false;
            return Ok(None);
        }
        if src.is_empty() {
            return Ok(None);
        }
        Ok(Some(Line::Complete(strip_eol(src.split()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_chunks(max: usize, chunks: &[&[u8]]) -> (Vec<Line>, usize) {
        let mut codec = BoundedLines::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut peak = 0;
        for c in chunks {
            buf.extend_from_slice(c);
            peak = peak.max(buf.len());
            while let Some(l) = codec.decode(&mut buf).unwrap() {
                out.push(l);
            }
        }
        while let Some(l) = codec.decode_eof(&mut buf).unwrap() {
            out.push(l);
        }
        (out, peak)
    }

    fn complete(s: &str) -> Line {
        Line::Complete(BytesMut::from(s))
    }

    #[test]
    fn splits_lines_and_strips_crlf() {
        let (out, _) = decode_chunks(100, &[b"a\r\nbb\n", b"c"]);
        assert_eq!(out, vec![complete("a"), complete("bb"), complete("c")]);
    }

    #[test]
    fn over_long_line_is_cut_and_the_rest_skipped() {
        let (out, _) = decode_chunks(4, &[b"0123456789", b"abc\nok\n"]);
        assert_eq!(
            out,
            vec![Line::TooLong(BytesMut::from("0123")), complete("ok")]
        );
    }

    #[test]
    fn over_long_line_in_one_chunk() {
        let (out, _) = decode_chunks(4, &[b"0123456789\nok\n"]);
        assert_eq!(
            out,
            vec![Line::TooLong(BytesMut::from("0123")), complete("ok")]
        );
    }

    #[test]
    fn exactly_max_is_accepted() {
        let (out, _) = decode_chunks(4, &[b"0123\n"]);
        assert_eq!(out, vec![complete("0123")]);
    }

    #[test]
    fn unterminated_over_long_tail_at_eof_is_dropped() {
        let (out, _) = decode_chunks(4, &[b"ok\n0123456789"]);
        assert_eq!(
            out,
            vec![complete("ok"), Line::TooLong(BytesMut::from("0123"))]
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn chunking_does_not_change_the_frames(
                lines in proptest::collection::vec("[a-z{}\":,]{0,40}", 0..20),
                cuts in proptest::collection::vec(1usize..17, 0..40),
                max in 1usize..48,
            ) {
                let mut bytes = Vec::new();
                for l in &lines { bytes.extend_from_slice(l.as_bytes()); bytes.push(b'\n'); }
                let (whole, _) = decode_chunks(max, &[&bytes]);
                let mut chunks: Vec<&[u8]> = Vec::new();
                let mut rest = &bytes[..];
                for c in cuts {
                    if rest.is_empty() { break; }
                    let n = c.min(rest.len());
                    chunks.push(&rest[..n]);
                    rest = &rest[n..];
                }
                chunks.extend(rest.chunks(16));
                let (split, peak) = decode_chunks(max, &chunks);
                prop_assert_eq!(&whole, &split);
                // Every line comes out, long ones cut.
                prop_assert_eq!(whole.len(), lines.len());
                for (l, out) in lines.iter().zip(&whole) {
                    match out {
                        Line::Complete(b) => prop_assert_eq!(&b[..], l.as_bytes()),
                        Line::TooLong(b) => {
                            prop_assert!(l.len() > max);
                            prop_assert_eq!(&b[..], &l.as_bytes()[..max]);
                        }
                    }
                }
                // Memory stays bounded by the limit plus one chunk.
                prop_assert!(peak <= max + 1 + 16 + 16);
            }
        }
    }

    #[test]
    fn skipping_counts_whole_lines_and_keeps_the_partial_one() {
        let mut codec = BoundedLines::new(4);
        let mut buf = BytesMut::from(&b"a\nbb\nccc\ndd"[..]);
        assert_eq!(codec.skip_complete(&mut buf), 3);
        assert_eq!(&buf[..], b"dd");
        // A cut line being discarded: its end is not another line.
        let mut buf = BytesMut::from(&b"toolongline"[..]);
        assert!(matches!(codec.decode(&mut buf), Ok(Some(Line::TooLong(_)))));
        buf.extend_from_slice(b"...\nx\ny");
        assert_eq!(codec.skip_complete(&mut buf), 1);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], b"y");
    }
}
