//! A minimal RESP2 client over a Unix socket: pipelined commands of byte strings, replies
//! read back in order. Enough for the harness, and nothing it does not need.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Status(s) if s == "OK")
    }

    pub fn bulk(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<&str> {
        match self {
            Reply::Status(s) => Some(s),
            _ => None,
        }
    }

    /// This error, or an error starting with `prefix` nested in this array.
    pub fn error_within(&self, prefix: &str) -> Option<&str> {
        match self {
            Reply::Error(e) if e.starts_with(prefix) => Some(e),
            Reply::Array(Some(items)) => items.iter().find_map(|r| r.error_within(prefix)),
            _ => None,
        }
    }

    /// An array of integers, as the limiting commands reply.
    pub fn integers(&self) -> Option<Vec<i64>> {
        match self {
            Reply::Array(Some(items)) => items
                .iter()
                .map(|r| match r {
                    Reply::Int(n) => Some(*n),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }
}

pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    out: Vec<u8>,
    pending: usize,
}

impl Client {
    pub fn connect(path: &Path) -> std::io::Result<Client> {
        let stream = UnixStream::connect(path)?;
        // A server that stops answering is a failure too, not a hang.
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Client {
            writer: stream.try_clone()?,
            reader: BufReader::with_capacity(1 << 16, stream),
            out: Vec::with_capacity(1 << 12),
            pending: 0,
        })
    }

    /// Queues a command; [`replies`](Self::replies) sends every queued one.
    pub fn push(&mut self, args: &[&[u8]]) -> &mut Self {
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            self.out
                .extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            self.out.extend_from_slice(arg);
            self.out.extend_from_slice(b"\r\n");
        }
        self.pending += 1;
        self
    }

    /// Sends the queued commands at once and reads their replies, in order.
    pub fn replies(&mut self) -> std::io::Result<Vec<Reply>> {
        self.writer.write_all(&self.out)?;
        self.out.clear();
        let n = std::mem::take(&mut self.pending);
        (0..n).map(|_| self.read()).collect()
    }

    pub fn call(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        Ok(self.push(args).replies()?.remove(0))
    }

    fn line(&mut self) -> std::io::Result<Vec<u8>> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\r\n") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    fn read(&mut self) -> std::io::Result<Reply> {
        let line = self.line()?;
        let (kind, rest) = line.split_first().ok_or_else(|| invalid("an empty line"))?;
        let text = String::from_utf8_lossy(rest).into_owned();
        let number = || text.parse::<i64>().map_err(|_| invalid("a bad number"));
        Ok(match kind {
            b'+' => Reply::Status(text),
            b'-' => Reply::Error(text),
            b':' => Reply::Int(number()?),
            b'$' => match number()? {
                -1 => Reply::Bulk(None),
                len => {
                    let mut buf = vec![0; len as usize + 2];
                    self.reader.read_exact(&mut buf)?;
                    buf.truncate(len as usize);
                    Reply::Bulk(Some(buf))
                }
            },
            b'*' => match number()? {
                -1 => Reply::Array(None),
                len => Reply::Array(Some(
                    (0..len).map(|_| self.read()).collect::<Result<_, _>>()?,
                )),
            },
            _ => return Err(invalid("an unknown reply type")),
        })
    }
}

fn invalid(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}
