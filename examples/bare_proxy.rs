//! The leanest TLS reverse proxy this project's stack makes: a measuring
//! anchor for `tests/load/inbound_vs_nginx.sh`, not a product.
//!
//! It is what fedpin's inbound edge is with everything of fedpin's taken
//! out: tokio-rustls terminates TLS (ring provider, the same certificate),
//! hyper 1 serves HTTP/1.1 with keep-alive, and each client connection
//! forwards its requests over one hyper HTTP/1.1 client connection of its
//! own to the upstream (no pool, no lookup, no lock). There are no edge
//! rules, no header rewriting, no timeouts, no access log, no metrics. The
//! threads are laid out as fedpin's lanes are: one single-threaded tokio
//! runtime per thread, each accepting from its duplicate of the one
//! listening socket, so a connection and its upstream connection stay on
//! one thread. The global allocator is fedpin's (the library's).
//!
//! Whatever CPU per request this spends is the floor of the stack (tokio,
//! rustls, hyper) for a proxied request; fedpin's edge can only add to it.
//!
//! Usage: `bare_proxy LISTEN UPSTREAM CERT_PEM KEY_PEM [THREADS]`, e.g.
//! `bare_proxy 127.0.0.1:18444 127.0.0.1:18080 server.pem server.key 2`.
//! Prints `bare proxy listening on ADDR` once bound, then serves until
//! killed.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

// fedpin's library is linked for its global allocator (mimalloc, see
// src/alloc.rs) and nothing else: the floor is measured on the same
// allocator as the proxy it is the floor of.
use fedpin as _;

/// What went wrong, as one line for stderr.
type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, cert, key, rest @ ..] = args.as_slice() else {
        return Err("usage: bare_proxy LISTEN UPSTREAM CERT_PEM KEY_PEM [THREADS]".into());
    };
    let listen: SocketAddr = listen
        .parse()
        .map_err(|e| format!("LISTEN {listen}: {e}"))?;
    let upstream: SocketAddr = upstream
        .parse()
        .map_err(|e| format!("UPSTREAM {upstream}: {e}"))?;
    let threads: usize = match rest.first() {
        Some(t) => t.parse().map_err(|e| format!("THREADS {t}: {e}"))?,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let acceptor = TlsAcceptor::from(Arc::new(server_config(cert, key)?));

    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "bare proxy listening on {}", listener.local_addr()?)?;
        out.flush()?;
    }
    let mut joins = Vec::new();
    for i in 0..threads.max(1) {
        let listener = listener.try_clone()?;
        let acceptor = acceptor.clone();
        joins.push(
            std::thread::Builder::new()
                .name(format!("bare-{i}"))
                .spawn(move || -> Result<(), Error> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(accept_loop(listener, acceptor, upstream))
                })?,
        );
    }
    for j in joins {
        j.join().map_err(|_| "a proxy thread panicked")??;
    }
    Ok(())
}

/// The certificate chain and key from PEM files, as a rustls server
/// configuration on the ring provider (HTTP/1.1 only).
fn server_config(cert: &str, key: &str) -> Result<rustls::ServerConfig, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{cert}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts connections on this thread's runtime, each served by a task of
/// its own on the same thread.
async fn accept_loop(
    listener: std::net::TcpListener,
    acceptor: TlsAcceptor,
    upstream: SocketAddr,
) -> Result<(), Error> {
    let listener = TcpListener::from_std(listener)?;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("bare proxy: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(tcp, acceptor, upstream).await {
                eprintln!("bare proxy: connection: {e}");
            }
        });
    }
}

/// One client connection: the TLS handshake, one upstream connection, and
/// every request of the client's forwarded over it in turn.
async fn serve(tcp: TcpStream, acceptor: TlsAcceptor, upstream: SocketAddr) -> Result<(), Error> {
    tcp.set_nodelay(true)?;
    let tls = acceptor.accept(tcp).await?;
    let up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("bare proxy: upstream connection: {e}");
        }
    });
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let mut sender = sender.lock().await;
            sender.ready().await?;
            let resp: Response<Incoming> = sender.send_request(req).await?;
            Ok::<_, hyper::Error>(resp)
        }
    });
    hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), service)
        .await?;
    Ok(())
}
