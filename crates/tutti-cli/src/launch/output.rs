//! Forwarding of rank output with a `[rank R] ` prefix per line.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::mpsc::Sender;
use std::thread;

use super::MAX_LINE;

/// Where a rank's stream goes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Sink {
    Stdout,
    Stderr,
}

impl Sink {
    /// Writes one whole line under the stream's lock (no interleaving between ranks).
    fn write_line(self, line: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout => write_flush(&mut io::stdout().lock(), line),
            Sink::Stderr => write_flush(&mut io::stderr().lock(), line),
        }
    }
}

fn write_flush(out: &mut impl Write, line: &[u8]) -> io::Result<()> {
    out.write_all(line)?;
    out.flush()
}

/// Starts a thread that forwards `src` to `sink`; it drops `done` when `src` is at EOF.
pub(super) fn forward<R: Read + Send + 'static>(rank: usize, src: R, sink: Sink, done: Sender<()>) {
    let name = format!("tutti-rank{rank}-{sink:?}").to_lowercase();
    let spawned = thread::Builder::new().name(name).spawn(move || {
        let prefix = format!("[rank {rank}] ");
        let mut broken = false;
        let result = pump(src, prefix.as_bytes(), |line| {
            // Once our stream is gone (EPIPE), keep draining so the rank never blocks.
            if !broken {
                if let Err(err) = sink.write_line(line) {
                    tracing::warn!(rank, ?sink, %err, "cannot forward rank output; dropping it");
                    broken = true;
                }
            }
        });
        if let Err(err) = result {
            tracing::warn!(rank, ?sink, %err, "cannot read rank output");
        }
        drop(done);
    });
    if let Err(err) = spawned {
        tracing::error!(rank, ?sink, %err, "cannot start an output thread; the rank's pipe is closed");
    }
}

/// Reads `src` to EOF and calls `emit` with each line, `prefix` first and `\n` last.
///
/// Lines longer than [`MAX_LINE`] are emitted in pieces of `MAX_LINE` bytes; a last line
/// without a newline gets one. Bytes are not decoded.
pub(super) fn pump(src: impl Read, prefix: &[u8], mut emit: impl FnMut(&[u8])) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(MAX_LINE, src);
    let mut line = Vec::with_capacity(prefix.len() + 256);
    loop {
        line.clear();
        line.extend_from_slice(prefix);
        let limit = u64::try_from(MAX_LINE).unwrap_or(u64::MAX);
        if (&mut reader).take(limit).read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        emit(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pumped(input: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        pump(input, b"[rank 7] ", |l| lines.push(l.to_vec())).unwrap();
        lines
    }

    #[test]
    fn pump_prefixes_every_line_and_ends_partial_lines() {
        let lines = pumped(b"one\ntwo\n\nlast");
        assert_eq!(
            lines,
            vec![
                b"[rank 7] one\n".to_vec(),
                b"[rank 7] two\n".to_vec(),
                b"[rank 7] \n".to_vec(),
                b"[rank 7] last\n".to_vec(),
            ]
        );
        assert!(pumped(b"").is_empty());
    }

    #[test]
    fn pump_passes_bytes_through_and_splits_long_lines() {
        assert_eq!(
            pumped(b"\xff\xfe\x00\n"),
            vec![b"[rank 7] \xff\xfe\x00\n".to_vec()]
        );
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let lines = pumped(&long);
        let sizes: Vec<usize> = lines
            .iter()
            .map(|l| l.len() - b"[rank 7] \n".len())
            .collect();
        assert_eq!(sizes, vec![MAX_LINE, MAX_LINE, 5]);
    }
}
