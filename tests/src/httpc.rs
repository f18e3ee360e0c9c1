//! A minimal HTTP/1.0 GET client (plain and TLS) for polling the elector's and the webhook's
//! endpoints tightly without a heavy client: one connection per request, `Connection: close`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn io_err(context: String, e: impl std::fmt::Display) -> Error {
    Error::Io {
        context,
        source: std::io::Error::other(e.to_string()),
    }
}

/// `GET http://addr/path`, failing after `timeout`.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response> {
    let what = format!("GET http://{addr}{path}");
    let fut = async {
        let stream = TcpStream::connect(addr).await?;
        exchange(stream, &addr.to_string(), path).await
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(bytes)) => parse_response(&bytes).map_err(|e| io_err(what, e)),
        Ok(Err(e)) => Err(io_err(what, e)),
        Err(_) => Err(io_err(what, format!("no response within {timeout:?}"))),
    }
}

/// `GET https://addr/path` trusting only `ca_pem`, verifying the certificate for `server_name`.
pub async fn get_tls(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    path: &str,
    timeout: Duration,
) -> Result<Response> {
    let what = format!("GET https://{addr}{path} (as {server_name})");
    let config = client_config(ca_pem).map_err(|e| io_err(what.clone(), e))?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| io_err(what.clone(), e))?;
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        exchange(tls, server_name, path).await
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(bytes)) => parse_response(&bytes).map_err(|e| io_err(what, e)),
        Ok(Err(e)) => Err(io_err(what, e)),
        Err(_) => Err(io_err(what, format!("no response within {timeout:?}"))),
    }
}

/// `POST https://addr/path` with a JSON `body`, trusting only `ca_pem` (e.g. an AdmissionReview
/// sent straight to the webhook, as anyone reaching its port could).
pub async fn post_tls(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<Response> {
    let what = format!("POST https://{addr}{path} (as {server_name})");
    let config = client_config(ca_pem).map_err(|e| io_err(what.clone(), e))?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| io_err(what.clone(), e))?;
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        let req = format!(
            "POST {path} HTTP/1.0\r\nHost: {server_name}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(req.as_bytes()).await?;
        tls.flush().await?;
        let mut buf = Vec::new();
        match tls.read_to_end(&mut buf).await {
            Ok(_) => Ok(buf),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => Ok(buf),
            Err(e) => Err(e),
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(bytes)) => parse_response(&bytes).map_err(|e| io_err(what, e)),
        Ok(Err(e)) => Err(io_err(what, e)),
        Err(_) => Err(io_err(what, format!("no response within {timeout:?}"))),
    }
}

fn client_config(ca_pem: &str) -> std::result::Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("bad CA PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("bad CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA PEM holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    path: &str,
) -> std::io::Result<Vec<u8>> {
    // HTTP/1.0 so the server answers with a plain body (no chunked encoding).
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    stream.flush().await?;
    let mut buf = Vec::new();
    match stream.read_to_end(&mut buf).await {
        Ok(_) => Ok(buf),
        // Some TLS servers close without close_notify; the full response is already read.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => Ok(buf),
        Err(e) => Err(e),
    }
}

/// Parses a complete HTTP/1.x response (status line, headers, body by Content-Length, chunked
/// or to the end).
pub fn parse_response(bytes: &[u8]) -> std::result::Result<Response, String> {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("incomplete response: no end of headers")?;
    let head = std::str::from_utf8(&bytes[..split]).map_err(|_| "non-UTF-8 headers")?;
    let mut body = &bytes[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 response: {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let resp = Response {
        status,
        headers,
        body: String::new(),
    };
    let decoded;
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        decoded = dechunk(body)?;
        body = &decoded;
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad Content-Length {len:?}"))?;
        if body.len() < len {
            return Err(format!("truncated body: {} of {len} bytes", body.len()));
        }
        body = &body[..len];
    }
    let body = String::from_utf8(body.to_vec()).map_err(|_| "non-UTF-8 body")?;
    Ok(Response { body, ..resp })
}

fn dechunk(mut data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_str = std::str::from_utf8(&data[..eol]).map_err(|_| "bad chunk size")?;
        let size_hex = size_str.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        type Want = std::result::Result<(u16, &'static str), &'static str>;
        let cases: &[(&[u8], Want)] = &[
            (b"HTTP/1.0 200 OK\r\nContent-Length: 14\r\n\r\n{\"name\":\"pod\"}", Ok((200, "{\"name\":\"pod\"}"))),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA", Ok((200, "ok"))),
            (b"HTTP/1.1 404 Not Found\r\n\r\nnope", Ok((404, "nope"))),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n", Ok((200, "abcde"))),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", Err("truncated")),
            (b"HTTP/1.1 200 OK\r\n", Err("no end of headers")),
            (b"SSH-2.0\r\n\r\n", Err("not an HTTP/1")),
        ];
        for (raw, want) in cases {
            let got = parse_response(raw);
            match (got, want) {
                (Ok(r), Ok((status, body))) => {
                    assert_eq!((r.status, r.body.as_str()), (*status, *body), "{raw:?}")
                }
                (Err(e), Err(frag)) => assert!(e.contains(frag), "{e} should contain {frag}"),
                (got, want) => panic!("{raw:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn header_lookup_ignores_case() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
            .expect("valid");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-missing"), None);
    }
}
