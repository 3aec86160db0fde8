//! The WebSocket session's socket, read at the frame budget: [`Metered`] sits between the
//! upgraded connection and the WebSocket layer, finds the header of every inbound frame in
//! the bytes as they are read, charges each one to the session's [`ReadBudget`], and stops
//! reading the socket while the budget is spent.
//!
//! The budget is charged here, per frame on the wire, and not per message the WebSocket layer
//! hands up: a message may arrive in any number of fragments (continuation frames, RFC 6455
//! section 5.4), and the WebSocket layer assembles them without a limit on their count, so a
//! message that never ends, made of empty fragments, reached no per-message count at all
//! (measured: ~17 million empty fragments/s from one socket kept a core 98 % busy; docs/
//! SECURITY.md, "Frames that no request limit sees"). Control frames (ping, pong, close) and
//! frames that do not decode are frames here like any other.
//!
//! Only the frame headers are looked at (2 to 14 bytes each); payloads are counted past, not
//! copied or unmasked. The WebSocket layer still checks every frame itself and closes the
//! session on a broken one; the meter never refuses anything, it only delays reads.

use crate::read_budget::{ReadBudget, ReadRate};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Finds frame boundaries in a WebSocket byte stream from the client, across reads of any
/// size.
#[derive(Debug, Default)]
pub struct FrameScan {
    /// The current frame's header bytes seen so far (a header is at most 14 bytes).
    head: [u8; 14],
    /// How many of `head` are filled.
    have: u8,
    /// Payload bytes of the last frame still to come.
    skip: u64,
}

/// The length of a frame header whose first bytes are `head`, as far as they tell (2 until
/// the second byte, which gives the length's encoding and whether a mask follows, is known).
fn header_len(head: &[u8]) -> usize {
    match head.get(1) {
        None => 2,
        Some(b) => {
            let length = match b & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if b & 0x80 != 0 { 4 } else { 0 };
            2 + length + mask
        }
    }
}

/// The payload length of a complete frame header.
fn payload_len(head: &[u8]) -> u64 {
    let short = head.get(1).map_or(0, |b| b & 0x7f);
    let mut be = [0u8; 8];
    match short {
        126 => {
            be[6..].copy_from_slice(head.get(2..4).unwrap_or(&[0, 0]));
            u64::from_be_bytes(be)
        }
        127 => {
            be.copy_from_slice(head.get(2..10).unwrap_or(&[0; 8]));
            u64::from_be_bytes(be)
        }
        n => u64::from(n),
    }
}

impl FrameScan {
    /// Takes the next bytes read from the client; calls `frame` with the payload length of
    /// every frame whose header they complete.
    pub fn feed(&mut self, mut data: &[u8], mut frame: impl FnMut(u64)) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip).map_or(data.len(), |s| s.min(data.len()));
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let have = usize::from(self.have);
            let take = header_len(&self.head[..have])
                .saturating_sub(have)
                .min(data.len());
            self.head[have..have + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            let have = have + take;
            self.have = have as u8;
            let head = &self.head[..have];
            if have == header_len(head) {
                let len = payload_len(head);
                self.have = 0;
                self.skip = len;
                frame(len);
            }
        }
    }
}

/// A connection whose reads follow the session's frame budget (see the module docs). Writes
/// pass through untouched.
pub struct Metered<S> {
    inner: S,
    rate: ReadRate,
    budget: ReadBudget,
    scan: FrameScan,
    /// Set while the budget is spent: reads resume when it fires (allocated only then, so an
    /// idle session carries no timer).
    pause: Option<Pin<Box<Sleep>>>,
}

impl<S> Metered<S> {
    /// Meters `inner`'s reads at `rate`.
    pub fn new(inner: S, rate: ReadRate) -> Self {
        Self {
            inner,
            rate,
            budget: ReadBudget::default(),
            scan: FrameScan::default(),
            pause: None,
        }
    }
}

/// Bytes a single frame is charged for at most: its declared length beyond this is refused
/// by the WebSocket layer anyway (`limits.max_frame_bytes`), and the cap keeps a forged
/// 2^63-byte length from pausing reads for centuries before that happens.
const MAX_CHARGED_BYTES: u64 = 1 << 32;

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(pause) = this.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
            this.pause = None;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if read.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let now = Instant::now();
        let (budget, rate) = (&mut this.budget, this.rate);
        let mut spent = false;
        this.scan.feed(read, |len| {
            let len = usize::try_from(len.min(MAX_CHARGED_BYTES)).unwrap_or(usize::MAX);
            spent |= budget.charge(rate, len, now);
        });
        // What was read is handed up; the next read waits until the budget has refilled.
        if let Some(resume) = spent.then(|| budget.resume_at(rate, now)).flatten() {
            crate::metrics::session_reads_paused();
            this.pause = Some(Box::pin(tokio::time::sleep_until(resume)));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: FIN and `opcode`, masked, with `payload`.
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        let n = payload.len();
        if n < 126 {
            out.push(0x80 | n as u8);
        } else if n <= usize::from(u16::MAX) {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        let mask = [1, 2, 3, 4];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn lengths_in(chunks: &[&[u8]]) -> Vec<u64> {
        let (mut scan, mut seen) = (FrameScan::default(), Vec::new());
        for c in chunks {
            scan.feed(c, |len| seen.push(len));
        }
        seen
    }

    #[test]
    fn every_frame_is_found_however_the_bytes_are_split() {
        let mut stream = Vec::new();
        let sizes = [0usize, 1, 125, 126, 300, 65_535, 65_536, 70_000];
        for (i, n) in sizes.iter().enumerate() {
            // Text, continuation, ping, pong, binary and close frames alike.
            let opcode = [0x1, 0x0, 0x9, 0xA, 0x2, 0x8][i % 6];
            stream.extend(frame(opcode, &vec![b'x'; *n]));
        }
        let want: Vec<u64> = sizes.iter().map(|n| *n as u64).collect();
        assert_eq!(lengths_in(&[&stream]), want);
        // Cut at every position into two reads, and into reads of a few bytes.
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(lengths_in(&[a, b]), want, "cut at {cut}");
        }
        for step in [1, 2, 3, 5, 7, 13] {
            let chunks: Vec<&[u8]> = stream.chunks(step).collect();
            assert_eq!(lengths_in(&chunks), want, "reads of {step} bytes");
        }
    }

    #[test]
    fn an_endless_fragmented_message_is_one_frame_per_header() {
        // A text frame without FIN, then empty continuation frames: 6 bytes each.
        let mut stream = vec![0x01, 0x80, 1, 2, 3, 4];
        for _ in 0..1000 {
            stream.extend_from_slice(&[0x00, 0x80, 1, 2, 3, 4]);
        }
        assert_eq!(lengths_in(&[&stream]).len(), 1001);
    }

    #[test]
    fn unmasked_and_extended_headers_are_read_to_their_end() {
        // Unmasked (the WebSocket layer refuses it, but the scan must not lose its place),
        // 16-bit and 64-bit lengths.
        let mut stream = vec![0x81, 3, b'a', b'b', b'c'];
        stream.extend_from_slice(&[0x82, 126, 0x01, 0x00]);
        stream.extend(std::iter::repeat_n(0u8, 256));
        stream.extend_from_slice(&[0x82, 0xff, 0, 0, 0, 0, 0, 0, 0, 2, 9, 9, 9, 9, 7, 7]);
        stream.extend_from_slice(&frame(0x9, b""));
        assert_eq!(lengths_in(&[&stream]), vec![3, 256, 2, 0]);
    }

    #[tokio::test]
    async fn reads_pause_once_the_frames_exceed_the_budget() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let limits = crate::read_budget::test_limits(100, 10);
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut metered = Metered::new(server, ReadRate::of(&limits));
        let mut flood = vec![0x01, 0x80, 1, 2, 3, 4];
        for _ in 0..29 {
            flood.extend_from_slice(&[0x00, 0x80, 1, 2, 3, 4]);
        }
        client.write_all(&flood).await.unwrap();
        let start = Instant::now();
        let mut buf = vec![0u8; 1 << 16];
        // The first read hands up what was there (30 frames, 20 over the burst)...
        let n = metered.read(&mut buf).await.unwrap();
        assert_eq!(n, flood.len());
        client.write_all(&[0x00, 0x80, 1, 2, 3, 4]).await.unwrap();
        // ...and the next waits until those 20 frames are paid for at 100/s (200 ms).
        assert_eq!(metered.read(&mut buf).await.unwrap(), 6);
        let waited = Instant::now() - start;
        assert!(
            waited >= tokio::time::Duration::from_millis(190),
            "{waited:?}"
        );
    }
}
