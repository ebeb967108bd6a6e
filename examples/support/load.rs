//! Shared by the load examples (`idle_conns`, `new_tunnels`): their
//! runtime, a TLS stand-in peer that answers every HTTP/1.1 request on a
//! kept-alive connection with a small JSON body, the listen-and-accept
//! loop, a line to stdout, and reading an HTTP head by hand.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::HandshakeKind;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Runs `work` to its end on a multi-threaded runtime with two workers (the
/// load examples share the machine's cores with what they measure).
pub fn run(work: impl Future<Output = Result<(), Error>>) -> Result<(), Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(work)
}

/// One line on stdout, flushed (the load scripts wait for these lines).
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Binds `listen`, says "`who` listening on ADDR", and hands every accepted
/// connection (Nagle off) to `each` until the process ends.
pub async fn accept_forever(
    listen: SocketAddr,
    who: &'static str,
    mut each: impl FnMut(TcpStream),
) -> Result<(), Error> {
    let listener = TcpListener::bind(listen).await?;
    say(&format!("{who} listening on {}", listener.local_addr()?));
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                each(tcp);
            }
            Err(e) => {
                eprintln!("{who}: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves on `listen` until the process ends. The body names `who`; every
/// answer carries `x-tls-handshake: full|resumed`, how this connection's
/// handshake went, so a client can count resumptions.
pub async fn serve(
    listen: SocketAddr,
    acceptor: TlsAcceptor,
    who: &'static str,
) -> Result<(), Error> {
    accept_forever(listen, who, move |tcp| {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(30), acceptor.accept(tcp)).await
            else {
                return;
            };
            let kind = match tls.get_ref().1.handshake_kind() {
                Some(HandshakeKind::Resumed) => "resumed",
                _ => "full",
            };
            let body = Bytes::from(format!("{{\"server\":{{\"name\":\"{who}\"}}}}"));
            let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let mut resp = Response::new(Full::new(body.clone()));
                let h = resp.headers_mut();
                h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                h.insert("x-tls-handshake", HeaderValue::from_static(kind));
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    })
    .await
}

/// Reads one HTTP head byte by byte (nothing after it is consumed).
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Result<String, Error> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 {
            return Err(format!(
                "closed after {:?}",
                String::from_utf8_lossy(&head).trim_end()
            )
            .into());
        }
        head.push(b[0]);
        if head.len() > 16 * 1024 {
            return Err("head over 16 KiB".into());
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}
