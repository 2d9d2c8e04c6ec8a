//! The gateway's admin API, over a minimal blocking HTTP/1.1 client (one
//! request per connection, loopback or a private network): rollout
//! verdicts and the routing state.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use quiver_contract::routing::RoutingState;

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("gateway at {0} unreachable: {1}")]
    Connect(String, std::io::Error),
    #[error("gateway answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("unexpected answer from the gateway: {0}")]
    Protocol(String),
}

#[derive(Debug, Clone)]
pub struct Gateway {
    /// `host:port`.
    authority: String,
    token: Option<String>,
}

impl Gateway {
    /// `url` is `http://host:port`.
    pub fn new(url: &str, token: Option<String>) -> Self {
        let authority = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        Gateway { authority, token }
    }

    /// `POST /v2/models/{m}/rollout`.
    pub fn verdict(
        &self,
        model: &str,
        action: &str,
        version: u64,
        reason: &str,
    ) -> Result<serde_json::Value, AdminError> {
        let body = serde_json::json!({"action": action, "version": version, "by": "quiver-trainer", "reason": reason});
        self.request("POST", &format!("/v2/models/{model}/rollout"), Some(&body))
    }

    /// The routing state in `GET /v2/models/{m}/routing`.
    pub fn routing(&self, model: &str) -> Result<RoutingState, AdminError> {
        let v = self.request("GET", &format!("/v2/models/{model}/routing"), None)?;
        serde_json::from_value(v["routing"].clone())
            .map_err(|e| AdminError::Protocol(format!("routing: {e}")))
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, AdminError> {
        let connect = |e| AdminError::Connect(self.authority.clone(), e);
        let mut stream = TcpStream::connect(&self.authority).map_err(connect)?;
        stream.set_read_timeout(Some(TIMEOUT)).map_err(connect)?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.authority,
            body.len()
        );
        stream.write_all(head.as_bytes()).map_err(connect)?;
        stream.write_all(body.as_bytes()).map_err(connect)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(connect)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| AdminError::Protocol("no header end".into()))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| AdminError::Protocol(format!("status line: {head}")))?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        if !(200..300).contains(&status) {
            return Err(AdminError::Status { status, body });
        }
        serde_json::from_str(&body).map_err(|e| AdminError::Protocol(format!("{e}: {body}")))
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn dechunks() {
        assert_eq!(super::dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
