//! A tiny blocking HTTP/1.1 client for tests: enough to ping atoll's unix socket,
//! make raw Docker API calls the CLI cannot express, and check a registry. One
//! request per connection (`Connection: close`); not for streaming endpoints.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
    }
}

/// A request body and its content type.
pub struct Body<'a> {
    pub content_type: &'a str,
    pub bytes: &'a [u8],
}

/// One request: method, path (with query), extra headers, optional body.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<Body<'a>>,
}

impl<'a> Request<'a> {
    /// A `GET path` without extra headers.
    pub fn get(path: &'a str) -> Request<'a> {
        Request {
            method: "GET",
            path,
            headers: &[],
            body: None,
        }
    }
}

/// Sends one request over the unix socket at `sock`.
pub fn unix_request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<Body<'_>>,
    timeout: Duration,
) -> io::Result<Response> {
    let req = Request {
        method,
        path,
        headers: &[],
        body,
    };
    send_unix(sock, &req, timeout)
}

/// Sends one request over TCP to `addr` (`host:port`).
pub fn tcp_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<Body<'_>>,
    timeout: Duration,
) -> io::Result<Response> {
    let req = Request {
        method,
        path,
        headers: &[],
        body,
    };
    send_tcp(addr, &req, timeout)
}

/// Sends `req` over the unix socket at `sock`.
pub fn send_unix(sock: &Path, req: &Request<'_>, timeout: Duration) -> io::Result<Response> {
    let s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    exchange(s, "localhost", req)
}

/// Sends `req` over TCP to `addr` (`host:port`).
pub fn send_tcp(addr: &str, req: &Request<'_>, timeout: Duration) -> io::Result<Response> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    exchange(s, addr, req)
}

fn exchange<S: Read + Write>(mut s: S, host: &str, r: &Request<'_>) -> io::Result<Response> {
    let (method, path, body) = (r.method, r.path, &r.body);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in r.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = &body {
        req.push_str(&format!(
            "Content-Type: {}\r\nContent-Length: {}\r\n",
            b.content_type,
            b.bytes.len()
        ));
    } else if method != "GET" && method != "HEAD" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    if let Some(b) = &body {
        s.write_all(b.bytes)?;
    }
    s.flush()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Parses a whole HTTP/1.1 response (the connection has been read to EOF).
pub fn parse_response(raw: &[u8], head: bool) -> io::Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head_text = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut headers = Vec::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let rest = &raw[end + 4..];
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if head || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(resp);
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    resp.body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        if rest.len() < len {
            return Err(bad("body shorter than content-length"));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(resp)
}

fn dechunk(mut b: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("truncated chunk size"))?;
        let size_text = std::str::from_utf8(&b[..eol]).map_err(|_| bad("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn parses_content_length_bodies() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nApi-Version: 1.47\r\n\r\nOKextra",
            false,
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "OK");
        assert_eq!(r.header("API-VERSION"), Some("1.47"));
    }

    #[test]
    fn parses_chunked_bodies() {
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.text(), "hello world");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_response(b"nonsense", false).is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n", false).is_err());
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                false
            )
            .is_err()
        );
    }

    #[test]
    fn talks_to_a_real_socket() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let mut req = Vec::new();
            // Read headers and the 3-byte body.
            while !req.ends_with(b"\r\n\r\nabc") {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0, "client closed early");
                req.extend_from_slice(&buf[..n]);
            }
            c.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone")
                .unwrap();
            String::from_utf8(req).unwrap()
        });
        let r = tcp_request(
            &addr,
            "POST",
            "/x?y=1",
            Some(Body {
                content_type: "text/plain",
                bytes: b"abc",
            }),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.text(), "done");
        let req = server.join().unwrap();
        assert!(req.starts_with("POST /x?y=1 HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Content-Length: 3\r\n"), "{req}");
    }
}
