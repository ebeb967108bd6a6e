//! A raw CONNECT client for fedpin's outbound proxy, speaking bytes on TCP
//! as a homeserver does before its inner TLS. Every read is bounded. And the
//! proxy's settings for a loopback test.

use std::net::SocketAddr;
use std::time::Duration;

use fedpin::egress::EgressPolicy;
use fedpin::proxy::outbound::OutboundSettings;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::bounded;

/// Outbound proxy settings for a loopback test: egress open to
/// 127.0.0.0/8, each of `hosts` resolved to 127.0.0.1, the rest default.
pub fn loopback_settings(hosts: &[&str]) -> OutboundSettings {
    OutboundSettings {
        resolve: hosts
            .iter()
            .map(|h| (h.to_string(), "127.0.0.1".parse().unwrap()))
            .collect(),
        egress: EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], vec![]),
        ..OutboundSettings::default()
    }
}

/// The proxy's answer to a CONNECT (or other request) head.
#[derive(Debug)]
pub struct ProxyReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl ProxyReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response head byte by byte (nothing of the tunnel is consumed).
pub async fn read_head(tcp: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
        assert!(head.len() < 64 * 1024, "response head too long");
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The status code of a response head.
pub fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}

/// Sends raw bytes to the proxy and reads its reply. A 2xx leaves the stream
/// open (the tunnel); anything else is read to EOF. `None`: the proxy
/// closed without answering.
pub async fn send_raw(proxy: SocketAddr, bytes: &[u8]) -> (Option<ProxyReply>, TcpStream) {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    // The proxy may close early (oversized head): a failed write is not a failure.
    let _ = tcp.write_all(bytes).await;
    let Some(head) = bounded("reading the proxy's reply head", read_head(&mut tcp)).await else {
        return (None, tcp);
    };
    let status = status_of(&head);
    let mut body = Vec::new();
    if !(200..300).contains(&status) {
        let _ = bounded("reading the proxy's reply body", tcp.read_to_end(&mut body)).await;
    }
    let reply = ProxyReply {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    (Some(reply), tcp)
}

/// `CONNECT target` with extra header lines; panics if the proxy sends no reply.
pub async fn connect(proxy: SocketAddr, target: &str, extra: &str) -> (ProxyReply, TcpStream) {
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n");
    let (reply, tcp) = send_raw(proxy, req.as_bytes()).await;
    let reply =
        reply.unwrap_or_else(|| panic!("CONNECT {target}: the proxy closed without a reply"));
    (reply, tcp)
}

/// `CONNECT target`, asserting the proxy's 200; the open tunnel.
pub async fn tunnel_tcp(proxy: SocketAddr, target: &str) -> TcpStream {
    let (reply, tcp) = connect(proxy, target, "").await;
    assert!(
        reply.head.starts_with("HTTP/1.1 200"),
        "CONNECT {target}: {reply:?}"
    );
    tcp
}

/// `CONNECT target` through `proxy` (asserting its 200), then TLS for `name`
/// inside the tunnel trusting only `ca` (fedpin's interception CA), as a
/// homeserver does.
pub async fn tunnel_tls(
    proxy: SocketAddr,
    target: &str,
    ca: &CertificateDer<'static>,
    name: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = tunnel_tcp(proxy, target).await;
    let config = super::net::client_config(&[ca], &[b"http/1.1"]);
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .unwrap()
}

/// Writes `GET path` for `host` with `Connection: close` on `io`, then reads
/// for at most `limit`: what arrived before EOF, an error (a peer that closes
/// without TLS close_notify) or the limit, as text.
pub async fn get_what_arrives<S>(io: &mut S, host: &str, path: &str, limit: Duration) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    io.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, io.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}
