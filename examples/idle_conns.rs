//! Idle kept-alive TLS connections, for the memory-per-connection
//! measurement (`tests/load/memory_per_conn.sh`, issue 13 item 3).
//!
//! Three modes:
//!
//! * `idle_conns tls --connect ADDR --name NAME --ca CA.pem -n N`: opens N
//!   TLS connections to ADDR (SNI NAME, trusting only CA.pem, ALPN
//!   `http/1.1`), does one keep-alive `GET PATH` on each, then holds them
//!   all idle. Used against fedpin's inbound edge and against nginx.
//! * `idle_conns tunnel --proxy ADDR --target HOST:PORT --ca FEDPIN_CA.pem -n N`:
//!   the same through fedpin's outbound proxy: `CONNECT HOST:PORT`, TLS inside
//!   the tunnel (trusting fedpin's interception CA), one GET, then idle.
//! * `idle_conns peer --cert CERT.pem --key KEY.pem`: the stand-in TLS peer
//!   the tunnels reach (HTTP/1.1 keep-alive, answers every request 200).
//!
//! The clients print `ready N` once every connection has had its answer
//! (a connection that fails is an error: the run stops), then wait for a
//! line on stdin (or `--hold-secs`, or end of input). On `check` they send
//! a second GET on every connection, print `alive M of N` (M answered 200:
//! the server kept them all open and usable) and exit; on end of input they
//! exit at once. The peer prints `idle_conns peer listening on ADDR` and
//! serves until killed.
//!
//! Every network step is bounded by `--step-secs` (default 30); openings run
//! `--parallel` at a time (default 32). Loopback use only.

#[path = "support/load.rs"]
mod load;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(about = "Idle kept-alive TLS connections (tests/load/memory_per_conn.sh)")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Args, Clone)]
struct ClientArgs {
    /// Connections to open and hold.
    #[arg(short = 'n', long, default_value_t = 1000)]
    n: usize,
    /// PEM file of the CA the client trusts (only it).
    #[arg(long)]
    ca: PathBuf,
    /// Request path of the GET on each connection.
    #[arg(long, default_value = "/_matrix/federation/v1/version")]
    path: String,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// Bound on each connection's setup (and on each `check` request), seconds.
    #[arg(long, default_value_t = 30)]
    step_secs: u64,
    /// Hold the connections at most this long, seconds.
    #[arg(long, default_value_t = 600)]
    hold_secs: u64,
}

#[derive(Subcommand)]
enum Mode {
    /// TLS connections straight to a server (fedpin inbound, nginx).
    Tls {
        /// The server's address.
        #[arg(long)]
        connect: SocketAddr,
        /// TLS name (SNI) and Host header.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        args: ClientArgs,
    },
    /// Tunnels through fedpin's outbound proxy (CONNECT, then TLS inside).
    Tunnel {
        /// The proxy's address.
        #[arg(long)]
        proxy: SocketAddr,
        /// The peer, `host:port`, as the CONNECT target (and TLS name).
        #[arg(long)]
        target: String,
        #[command(flatten)]
        args: ClientArgs,
    },
    /// The stand-in TLS peer the tunnels reach.
    Peer {
        /// Certificate chain, PEM.
        #[arg(long)]
        cert: PathBuf,
        /// Private key, PEM.
        #[arg(long)]
        key: PathBuf,
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

/// Where a client connection goes.
#[derive(Clone)]
enum Dest {
    Direct(SocketAddr),
    Proxy(SocketAddr),
}

/// One established connection and what the GET needs.
struct Conn {
    tls: TlsStream<TcpStream>,
}

fn connector(ca: &Path) -> Result<TlsConnector, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in fedpin::tls::load_certs(ca)? {
        roots.add(c)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// One keep-alive GET; the status (the body, by Content-Length, is read and dropped).
async fn get<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    path: &str,
) -> Result<u16, Error> {
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: idle_conns\r\n\r\n").as_bytes(),
    )
    .await?;
    s.flush().await?;
    let head = load::read_head(s).await?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
    if head.to_ascii_lowercase().contains("connection: close") {
        return Err(format!("the server closes the connection: {head:?}").into());
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(status)
}

/// TCP (and CONNECT) + TLS + one GET answered 200.
async fn open(
    dest: &Dest,
    name: &str,
    authority: &str,
    path: &str,
    tls: &TlsConnector,
) -> Result<Conn, Error> {
    let tcp = match dest {
        Dest::Direct(a) => {
            let tcp = TcpStream::connect(a).await?;
            tcp.set_nodelay(true)?;
            tcp
        }
        Dest::Proxy(p) => {
            let mut tcp = TcpStream::connect(p).await?;
            tcp.set_nodelay(true)?;
            tcp.write_all(
                format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes(),
            )
            .await?;
            let head = load::read_head(&mut tcp).await?;
            if head.split_whitespace().nth(1) != Some("200") {
                return Err(
                    format!("CONNECT {authority}: {}", head.lines().next().unwrap_or("")).into(),
                );
            }
            tcp
        }
    };
    let mut tls = tls
        .connect(ServerName::try_from(name.to_string())?, tcp)
        .await?;
    let status = get(&mut tls, authority, path).await?;
    if status != 200 {
        return Err(format!("GET {path}: status {status}").into());
    }
    Ok(Conn { tls })
}

async fn client(dest: Dest, name: String, authority: String, a: ClientArgs) -> Result<(), Error> {
    let tls = connector(&a.ca)?;
    let step = Duration::from_secs(a.step_secs);
    let sem = Arc::new(tokio::sync::Semaphore::new(a.parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.n {
        let permit = sem.clone().acquire_owned().await?;
        let (dest, name, authority, path, tls) = (
            dest.clone(),
            name.clone(),
            authority.clone(),
            a.path.clone(),
            tls.clone(),
        );
        tasks.spawn(async move {
            let r = tokio::time::timeout(step, open(&dest, &name, &authority, &path, &tls)).await;
            drop(permit);
            match r {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(format!("connection {i}: {e}")),
                Err(_) => Err(format!("connection {i}: not set up within {step:?}")),
            }
        });
    }
    let mut conns = Vec::with_capacity(a.n);
    while let Some(r) = tasks.join_next().await {
        conns.push(r??);
    }
    load::say(&format!("ready {}", conns.len()));

    // Hold, idle, until told (or the bound passes).
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(line);
    });
    let cmd = tokio::time::timeout(Duration::from_secs(a.hold_secs), rx).await;
    let check = matches!(&cmd, Ok(Ok(line)) if line.trim() == "check");
    if !check {
        load::say(&format!("done {} (no check)", conns.len()));
        return Ok(());
    }
    let total = conns.len();
    let mut alive = 0usize;
    let mut first_error = None;
    let mut checks = tokio::task::JoinSet::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let (authority, path) = (authority.clone(), a.path.clone());
        let permit = sem.clone().acquire_owned().await?;
        checks.spawn(async move {
            let r = tokio::time::timeout(step, get(&mut c.tls, &authority, &path)).await;
            drop(permit);
            match r {
                Ok(Ok(200)) => Ok(()),
                Ok(Ok(s)) => Err(format!("connection {i}: second GET: status {s}")),
                Ok(Err(e)) => Err(format!("connection {i}: second GET: {e}")),
                Err(_) => Err(format!(
                    "connection {i}: second GET: no answer within {step:?}"
                )),
            }
        });
    }
    while let Some(r) = checks.join_next().await {
        match r? {
            Ok(()) => alive += 1,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    load::say(&format!("alive {alive} of {total}"));
    if let Some(e) = first_error {
        eprintln!("idle_conns: first failure: {e}");
    }
    Ok(())
}

async fn peer(cert: PathBuf, key: PathBuf, listen: SocketAddr) -> Result<(), Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            fedpin::tls::load_certs(&cert)?,
            fedpin::tls::load_key(&key)?,
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    load::serve(
        listen,
        TlsAcceptor::from(Arc::new(config)),
        "idle_conns peer",
    )
    .await
}

fn main() -> Result<(), Error> {
    let cli = Cli::parse();
    load::run(async move {
        match cli.mode {
            Mode::Tls {
                connect,
                name,
                args,
            } => client(Dest::Direct(connect), name.clone(), name, args).await,
            Mode::Tunnel {
                proxy,
                target,
                args,
            } => {
                let host = target
                    .rsplit_once(':')
                    .map(|(h, _)| h.to_string())
                    .ok_or("--target must be host:port")?;
                client(Dest::Proxy(proxy), host, target, args).await
            }
            Mode::Peer { cert, key, listen } => peer(cert, key, listen).await,
        }
    })
}
