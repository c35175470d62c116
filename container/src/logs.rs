//! CRI container log files: `<RFC3339Nano> <stream> <P|F> <content>` lines.
//!
//! A line is written whole (`F`) when its newline arrives; a line longer than
//! [`MAX_LINE`] is cut into `P` pieces. The file can be reopened (after the
//! kubelet rotated it) without losing lines: writers hold the lock while
//! writing a line, and reopen swaps the file under the same lock.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Longest piece written as one log line.
pub const MAX_LINE: usize = 16 * 1024;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// The stream's name in a log line: `stdout` or `stderr`.
    pub fn tag(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A container's log file, shared by its stream readers.
#[derive(Debug, Clone)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<Option<File>>>,
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogFile {
    /// Opens (creating) the log at `path`.
    pub fn open(path: PathBuf) -> std::io::Result<Self> {
        let file = open(&path)?;
        Ok(Self {
            path,
            file: Arc::new(Mutex::new(Some(file))),
        })
    }

    /// Closes the current file and opens `path` afresh.
    pub fn reopen(&self) -> std::io::Result<()> {
        let mut guard = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = open(&self.path)?;
        *guard = Some(fresh);
        Ok(())
    }

    /// The path the log is (re)opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one log line of `stream` holding `content` (without its
    /// newline), tagged `P` if `partial` (a piece of a longer line) or `F`.
    /// A failed write is logged and otherwise ignored: a full disk must not
    /// stop the container.
    pub fn write_line(&self, stream: Stream, partial: bool, content: &[u8]) {
        let stamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut line = Vec::with_capacity(content.len() + 48);
        line.extend_from_slice(stamp.as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.tag().as_bytes());
        line.extend_from_slice(if partial { b" P " } else { b" F " });
        line.extend_from_slice(content);
        line.push(b'\n');
        let mut guard = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(f) = guard.as_mut()
            && let Err(e) = f.write_all(&line)
        {
            tracing::warn!(path = %self.path.display(), "log write failed: {e}");
        }
    }
}

/// Splits a byte stream into CRI log lines.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineSplitter {
    /// A splitter for `stream`.
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    /// Feeds bytes; complete lines (and over-long pieces) go to `log`.
    pub fn push(&mut self, data: &[u8], log: &LogFile) {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let end = start + nl;
            let mut line = &self.pending[start..end];
            while line.len() > MAX_LINE {
                log.write_line(self.stream, true, &line[..MAX_LINE]);
                line = &line[MAX_LINE..];
            }
            log.write_line(self.stream, false, line);
            start = end + 1;
        }
        self.pending.drain(..start);
        while self.pending.len() >= MAX_LINE {
            let piece: Vec<u8> = self.pending.drain(..MAX_LINE).collect();
            log.write_line(self.stream, true, &piece);
        }
    }

    /// At end of stream, writes what is left as a final line.
    pub fn finish(&mut self, log: &LogFile) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            log.write_line(self.stream, false, &rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_tagged_and_long_lines_split() {
        let dir = std::env::temp_dir().join(format!("frakti-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("0.log");
        let log = LogFile::open(path.clone()).unwrap();
        let mut out = LineSplitter::new(Stream::Stdout);
        out.push(b"hel", &log);
        out.push(b"lo\nwor", &log);
        let long = vec![b'x'; MAX_LINE + 10];
        let mut err = LineSplitter::new(Stream::Stderr);
        err.push(&long, &log);
        err.push(b"\n", &log);
        out.push(b"ld", &log);
        out.finish(&log);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.splitn(4, ' ').collect()).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0][1..], ["stdout", "F", "hello"]);
        assert_eq!(lines[1][1..3], ["stderr", "P"]);
        assert_eq!(lines[1][3].len(), MAX_LINE);
        assert_eq!(lines[2][1..], ["stderr", "F", "xxxxxxxxxx"]);
        assert_eq!(lines[3][1..], ["stdout", "F", "world"]);
        assert!(chrono::DateTime::parse_from_rfc3339(lines[0][0]).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
