//! HTTP/1.1 over the engine's Unix socket, blocking: [`get_json`] for one answer, [`Stream`] for
//! the events endpoint's endless one. The head is parsed by `httparse`; bodies come whole
//! (`Content-Length`), chunked, or until the connection closes. Everything is bounded: a head of
//! at most 64 KiB, a body or an event line of at most 4 MiB, and a time limit on every read but
//! a stream's.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

/// Errors talking to the engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The socket could not be reached or the connection failed.
    #[error("Docker engine at {socket}: {source}")]
    Io {
        /// The socket.
        socket: String,
        /// Why.
        source: std::io::Error,
    },
    /// The engine answered something that is not HTTP or JSON as expected.
    #[error("Docker engine: {0}")]
    Protocol(String),
    /// The engine refused the request.
    #[error("Docker engine answered {status} to {path}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The request's path.
        path: String,
        /// The engine's message.
        message: String,
    },
}

/// Largest response head read.
const MAX_HEAD: usize = 64 * 1024;
/// Largest body, chunk or event line read.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Time limit on a request's connect and each read (a stream's reads excepted).
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The API version asked for: the oldest that has everything used here (Docker 1.13 on).
const API: &str = "/v1.25";

/// A response whose head was read: the reader is at the body.
struct Response {
    reader: BufReader<UnixStream>,
    /// How the body is framed.
    framing: Framing,
}

/// How a body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// `Content-Length`.
    Length(usize),
    /// Until the connection closes.
    Close,
}

/// `GET path` (after the API version): its JSON body.
pub fn get_json(socket: &Path, path: &str) -> Result<serde_json::Value, DockerError> {
    let mut response = request(socket, path, Some(TIMEOUT))?;
    let body = read_body(&mut response.reader, response.framing)?;
    serde_json::from_slice(&body)
        .map_err(|e| DockerError::Protocol(format!("{path}: an answer that is not JSON: {e}")))
}

/// An endless response: one JSON value per line (the events endpoint).
pub struct Stream {
    reader: BufReader<UnixStream>,
    framing: Framing,
    /// Bytes left in the current chunk.
    chunk_left: usize,
}

impl Stream {
    /// `GET path`, kept open.
    pub fn open(socket: &Path, path: &str) -> Result<Self, DockerError> {
        let response = request(socket, path, None)?;
        Ok(Self {
            reader: response.reader,
            framing: response.framing,
            chunk_left: 0,
        })
    }

    /// A handle on the connection: shutting it down from another thread ends the stream
    /// ([`Stream::next`] then returns `None`).
    pub fn stopper(&self) -> std::io::Result<UnixStream> {
        self.reader.get_ref().try_clone()
    }

    /// The next JSON value; `None` when the engine or a [`Stream::stopper`] closed the stream.
    pub fn next_value(&mut self) -> Option<Result<serde_json::Value, DockerError>> {
        let mut line = Vec::new();
        loop {
            let byte = match self.next_byte() {
                Ok(Some(b)) => b,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            };
            if byte == b'\n' {
                if line.iter().all(u8::is_ascii_whitespace) {
                    line.clear();
                    continue;
                }
                return Some(serde_json::from_slice(&line).map_err(|e| {
                    DockerError::Protocol(format!("an event that is not JSON: {e}"))
                }));
            }
            if line.len() >= MAX_BODY {
                return Some(Err(DockerError::Protocol(
                    "an event line over 4 MiB".into(),
                )));
            }
            line.push(byte);
        }
    }

    /// The next byte of the body, chunks undone; `None` at its end.
    fn next_byte(&mut self) -> Result<Option<u8>, DockerError> {
        if self.framing == Framing::Chunked && self.chunk_left == 0 {
            match read_chunk_size(&mut self.reader) {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => self.chunk_left = n,
            }
        }
        let mut b = [0u8; 1];
        match self.reader.read(&mut b) {
            // Closed by the engine, or shut down from another thread.
            Ok(0) | Err(_) => Ok(None),
            Ok(_) => {
                if self.framing == Framing::Chunked {
                    self.chunk_left -= 1;
                    if self.chunk_left == 0 {
                        expect_crlf(&mut self.reader)?;
                    }
                }
                Ok(Some(b[0]))
            }
        }
    }
}

fn io(socket: &Path, source: std::io::Error) -> DockerError {
    DockerError::Io {
        socket: socket.display().to_string(),
        source,
    }
}

/// Sends `GET {API}{path}` and reads the response head. A status other than 2xx is an error
/// carrying the engine's message.
fn request(socket: &Path, path: &str, timeout: Option<Duration>) -> Result<Response, DockerError> {
    let mut stream = UnixStream::connect(socket).map_err(|e| io(socket, e))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| io(socket, e))?;
    write!(
        stream,
        "GET {API}{path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: cleanroom\r\n\
         Accept: application/json\r\n\r\n"
    )
    .map_err(|e| io(socket, e))?;
    let mut reader = BufReader::new(stream);
    let head = read_head(&mut reader).map_err(|e| io(socket, e))?;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    parsed
        .parse(&head)
        .map_err(|e| DockerError::Protocol(format!("{path}: a bad response head: {e}")))?;
    let status = parsed.code.unwrap_or(0);
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let framing = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        Framing::Chunked
    } else if let Some(n) = header("content-length").and_then(|v| v.parse().ok()) {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    if !(200..300).contains(&status) {
        let body = read_body(&mut reader, framing).unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
        return Err(DockerError::Status {
            status,
            path: path.to_owned(),
            message,
        });
    }
    // A stream waits as long as the engine has nothing to say.
    reader
        .get_ref()
        .set_read_timeout(timeout)
        .map_err(|e| io(socket, e))?;
    Ok(Response { reader, framing })
}

/// The response head, up to and with its blank line.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let room = MAX_HEAD.saturating_sub(head.len()) as u64;
        let n = reader.by_ref().take(room).read_until(b'\n', &mut head)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the response head was cut short or is over 64 KiB",
            ));
        }
    }
    Ok(head)
}

/// A whole body, at most [`MAX_BODY`] bytes.
fn read_body(reader: &mut impl BufRead, framing: Framing) -> Result<Vec<u8>, DockerError> {
    let too_big = || DockerError::Protocol("a body over 4 MiB".into());
    let failed = |e: std::io::Error| DockerError::Protocol(format!("reading a body: {e}"));
    let mut body = Vec::new();
    match framing {
        Framing::Length(n) => {
            if n > MAX_BODY {
                return Err(too_big());
            }
            body.resize(n, 0);
            reader.read_exact(&mut body).map_err(failed)?;
        }
        Framing::Close => {
            reader
                .take(MAX_BODY as u64 + 1)
                .read_to_end(&mut body)
                .map_err(failed)?;
            if body.len() > MAX_BODY {
                return Err(too_big());
            }
        }
        Framing::Chunked => loop {
            let n = read_chunk_size(reader)?;
            if n == 0 {
                break;
            }
            if body.len() + n > MAX_BODY {
                return Err(too_big());
            }
            let start = body.len();
            body.resize(start + n, 0);
            reader.read_exact(&mut body[start..]).map_err(failed)?;
            expect_crlf(reader)?;
        },
    }
    Ok(body)
}

/// A chunk's size line (hexadecimal, extensions ignored).
fn read_chunk_size(reader: &mut impl BufRead) -> Result<usize, DockerError> {
    let mut line = String::new();
    reader
        .take(1024)
        .read_line(&mut line)
        .map_err(|e| DockerError::Protocol(format!("reading a chunk size: {e}")))?;
    let digits = line.split(';').next().unwrap_or("").trim();
    let n = usize::from_str_radix(digits, 16)
        .map_err(|_| DockerError::Protocol(format!("a bad chunk size {digits:?}")))?;
    if n > MAX_BODY {
        return Err(DockerError::Protocol("a chunk over 4 MiB".into()));
    }
    Ok(n)
}

/// The CRLF after a chunk's data.
fn expect_crlf(reader: &mut impl Read) -> Result<(), DockerError> {
    let mut crlf = [0u8; 2];
    reader
        .read_exact(&mut crlf)
        .map_err(|e| DockerError::Protocol(format!("reading a chunk's end: {e}")))?;
    if &crlf != b"\r\n" {
        return Err(DockerError::Protocol("a chunk not ended by CRLF".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_read_whole_chunked_or_to_the_end_and_bounded() {
        let mut chunked = BufReader::new(&b"4\r\nWiki\r\n6;x=y\r\npedia \r\n0\r\n\r\n"[..]);
        assert_eq!(
            read_body(&mut chunked, Framing::Chunked).unwrap(),
            b"Wikipedia "
        );
        let mut whole = BufReader::new(&b"abcdef"[..]);
        assert_eq!(read_body(&mut whole, Framing::Length(3)).unwrap(), b"abc");
        let mut rest = BufReader::new(&b"to the end"[..]);
        assert_eq!(read_body(&mut rest, Framing::Close).unwrap(), b"to the end");
        let mut huge = BufReader::new(&b"FFFFFFFF\r\n"[..]);
        assert!(read_body(&mut huge, Framing::Chunked).is_err());
        let mut bad = BufReader::new(&b"zz\r\n"[..]);
        assert!(read_body(&mut bad, Framing::Chunked).is_err());
        let mut unended = BufReader::new(&b"2\r\nabXY0\r\n\r\n"[..]);
        assert!(read_body(&mut unended, Framing::Chunked).is_err());
        assert!(read_body(&mut BufReader::new(&b""[..]), Framing::Length(MAX_BODY + 1)).is_err());
    }

    #[test]
    fn a_head_ends_at_its_blank_line_and_is_bounded() {
        let mut r = BufReader::new(&b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody"[..]);
        assert_eq!(
            read_head(&mut r).unwrap(),
            b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n"
        );
        let endless = vec![b'x'; MAX_HEAD + 10];
        assert!(read_head(&mut BufReader::new(&endless[..])).is_err());
        assert!(read_head(&mut BufReader::new(&b"HTTP/1.1 200 OK\r\n"[..])).is_err());
    }
}
