//! One HTTP/1.1 request on a fresh blocking connection, for the gateway's
//! own small clients on background threads (the trace exporter, the
//! dashboard's read of the trainer's metrics): `http://` only, the whole
//! answer read (`Connection: close`), no chunked bodies.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// An `http://host:port/path` URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host:port`, as connected to and sent in `Host`.
    pub authority: String,
    pub path: String,
}

impl Url {
    /// `default_path` when the URL has none.
    pub fn parse(url: &str, default_path: &str) -> Result<Url, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("'{url}' is not an http:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, default_path),
        };
        if authority.is_empty() || !authority.contains(':') {
            return Err(format!("'{url}' must name a host and a port"));
        }
        Ok(Url {
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// Sends `method` with `body` (of `content_type`, if any) and returns the
/// body of a 2xx answer; any other status is an error.
pub fn request(
    url: &Url,
    method: &str,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let addr = url
        .authority
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("the host has no address")?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        url.path, url.authority
    );
    if let Some((content_type, bytes)) = body {
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            bytes.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    if let Some((_, bytes)) = body {
        s.write_all(bytes).map_err(|e| e.to_string())?;
    }
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no end of headers")?;
    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
    let status = head.get(9..12).unwrap_or("");
    if !status.starts_with('2') {
        return Err(format!("{url} answered {status}"));
    }
    if head.contains("transfer-encoding: chunked") {
        return Err(format!("{url} answered with a chunked body"));
    }
    Ok(answer[split + 4..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::Url;

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:4318/v1/traces", "/").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("127.0.0.1:4318", "/v1/traces")
        );
        assert_eq!(
            Url::parse("http://otel:4318", "/v1/traces").unwrap().path,
            "/v1/traces"
        );
        assert!(Url::parse("https://otel:4318/v1/traces", "/").is_err());
        assert!(Url::parse("http://otel/v1/traces", "/").is_err());
    }
}
