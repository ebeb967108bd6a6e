//! A stand-in for a homeserver's plain-HTTP federation listener, for load
//! measurements (`tests/load/inbound_vs_nginx.sh`): HTTP/1.1 with keep-alive
//! on a multi-threaded tokio runtime, answering every request at once with
//! the same small JSON body. It does no work per request beyond HTTP itself,
//! so whatever sits in front of it is what a load test measures.
//!
//! Usage: `stand_in_upstream [ADDR]` (default `127.0.0.1:0`). Prints
//! `stand-in upstream listening on ADDR` once bound, then serves until killed.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// About the size of a small `/_matrix/key/v2/server` answer's envelope.
const BODY: &[u8] = br#"{"server_name":"bench.fedpin.test","valid_until_ts":4102444800000,"verify_keys":{"ed25519:1":{"key":"Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw"}},"old_verify_keys":{},"signatures":{}}"#;

async fn answer(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        Some(a) => a.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{a}: {e}"))
        })?,
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "stand-in upstream listening on {bound}")?;
        out.flush()?;
    }
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("stand-in upstream: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(answer));
            // A load generator closing its connections at the end is no news.
            let _ = conn.await;
        });
    }
}
