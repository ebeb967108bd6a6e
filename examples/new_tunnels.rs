//! New tunnels, one after another, for the upstream-resumption measurement
//! (`tests/load/outbound_resumption.sh`, issue 13 item 4).
//!
//! Three modes:
//!
//! * `new_tunnels client --proxy ADDR --target HOST:PORT --ca CA.pem -n N`:
//!   opens N new tunnels, `--parallel` at a time: `CONNECT HOST:PORT`, TLS
//!   inside the tunnel (SNI HOST, trusting only CA.pem, ALPN `http/1.1`,
//!   session resumption off, so every inner handshake is a full one), one
//!   `GET PATH` with `Connection: close`, the answer read, close. It tallies
//!   the peer's `x-tls-handshake` answer header (how the peer's own TLS
//!   handshake on that connection went: `full` or `resumed`) and prints one
//!   line: `done ok=N full=F resumed=R failed=X secs=T`. A failed tunnel is
//!   counted (the first error goes to stderr), the run goes on.
//! * `new_tunnels peer --cert CERT.pem --key KEY.pem --tickets on|off`: the
//!   stand-in TLS peer (HTTP/1.1, answers every request 200 with
//!   `x-tls-handshake`). `on` issues TLS 1.3 tickets (stateless, rustls'
//!   ring ticketer; 2 per handshake, rustls' default) and resumes them;
//!   `off` issues none and keeps no session cache: every handshake is full.
//!   Prints `new_tunnels peer listening on ADDR`.
//! * `new_tunnels floor --cert CERT.pem --key KEY.pem --ca CA.pem`: the floor
//!   an intercepting proxy cannot go below without resumption: per
//!   connection, reads the `CONNECT HOST:PORT` head and answers 200, one
//!   full rustls server handshake with the client (CERT, rustls' default
//!   server settings), one full rustls client handshake to 127.0.0.1:PORT
//!   (SNI HOST, Web PKI against CA.pem, resumption off), then relays bytes
//!   both ways until either side ends. No pin check, no minting, no limits,
//!   no log. Prints `new_tunnels floor listening on ADDR`. With `--resume`
//!   its client side resumes sessions (rustls' default in-memory store): the
//!   least an intercepting proxy with upstream resumption does.
//!
//! Every network step is bounded by `--step-secs` (default 30). Loopback
//! use only.

#[path = "support/load.rs"]
mod load;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(about = "New tunnels through a proxy (tests/load/outbound_resumption.sh)")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Clone, Copy, ValueEnum)]
enum Tickets {
    On,
    Off,
}

#[derive(Subcommand)]
enum Mode {
    /// N new tunnels through a CONNECT proxy, one GET each.
    Client(ClientArgs),
    /// The stand-in TLS peer.
    Peer(PeerArgs),
    /// The floor: a bare rustls relay, two full handshakes per connection.
    Floor(FloorArgs),
}

#[derive(Args)]
struct ClientArgs {
    /// The proxy's address.
    #[arg(long)]
    proxy: SocketAddr,
    /// The peer, `host:port`, as the CONNECT target (HOST is the TLS name).
    #[arg(long)]
    target: String,
    /// PEM file of the CA the client trusts (only it).
    #[arg(long)]
    ca: PathBuf,
    /// Tunnels to open.
    #[arg(short = 'n', long, default_value_t = 1000)]
    n: usize,
    /// Tunnels open at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Request path of the GET.
    #[arg(long, default_value = "/_matrix/federation/v1/version")]
    path: String,
    /// Bound on each tunnel (CONNECT, handshake, GET), seconds.
    #[arg(long, default_value_t = 30)]
    step_secs: u64,
}

#[derive(Args)]
struct PeerArgs {
    /// Certificate chain, PEM.
    #[arg(long)]
    cert: PathBuf,
    /// Private key, PEM.
    #[arg(long)]
    key: PathBuf,
    /// Issue TLS 1.3 tickets (and resume them), or not.
    #[arg(long, value_enum)]
    tickets: Tickets,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[derive(Args)]
struct FloorArgs {
    /// Certificate chain presented to the client, PEM.
    #[arg(long)]
    cert: PathBuf,
    /// Its private key, PEM.
    #[arg(long)]
    key: PathBuf,
    /// PEM file of the CA the peer's certificate must chain to.
    #[arg(long)]
    ca: PathBuf,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Bound on each connection's setup, seconds.
    #[arg(long, default_value_t = 30)]
    step_secs: u64,
    /// Resume upstream sessions (the client side).
    #[arg(long)]
    resume: bool,
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in fedpin::tls::load_certs(ca)? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// A TLS client config trusting only `ca`, ALPN `http/1.1`, resumption
/// off unless `resume`.
fn client_config(ca: &Path, resume: bool) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// A TLS server config with rustls' defaults, ALPN `http/1.1`.
fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(fedpin::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(fedpin::tls::load_certs(cert)?, fedpin::tls::load_key(key)?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// One tunnel: CONNECT, TLS, GET answered 200; the peer's handshake kind.
async fn tunnel(
    proxy: SocketAddr,
    authority: &str,
    host: &str,
    path: &str,
    tls: &TlsConnector,
) -> Result<String, Error> {
    let mut tcp = TcpStream::connect(proxy).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await?;
    let head = load::read_head(&mut tcp).await?;
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(format!("CONNECT {authority}: {}", head.lines().next().unwrap_or("")).into());
    }
    let mut s = tls
        .connect(ServerName::try_from(host.to_string())?, tcp)
        .await?;
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: new_tunnels\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    s.flush().await?;
    let head = load::read_head(&mut s).await?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("GET {path}: {}", head.lines().next().unwrap_or("")).into());
    }
    let len: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    let kind = header(&head, "x-tls-handshake")
        .unwrap_or("unknown")
        .to_string();
    let _ = s.shutdown().await;
    Ok(kind)
}

async fn client(
    ClientArgs {
        proxy,
        target,
        ca,
        n,
        parallel,
        path,
        step_secs,
    }: ClientArgs,
) -> Result<(), Error> {
    let host = target
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .ok_or("--target must be host:port")?;
    let tls = TlsConnector::from(client_config(&ca, false)?);
    let step = Duration::from_secs(step_secs);
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (target, host, path, tls) = (target.clone(), host.clone(), path.clone(), tls.clone());
        tasks.spawn(async move {
            let r = tokio::time::timeout(step, tunnel(proxy, &target, &host, &path, &tls)).await;
            drop(permit);
            match r {
                Ok(Ok(kind)) => Ok(kind),
                Ok(Err(e)) => Err(format!("tunnel {i}: {e}")),
                Err(_) => Err(format!("tunnel {i}: not done within {step:?}")),
            }
        });
    }
    let (mut ok, mut full, mut resumed, mut failed) = (0usize, 0usize, 0usize, 0usize);
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(kind) => {
                ok += 1;
                match kind.as_str() {
                    "full" => full += 1,
                    "resumed" => resumed += 1,
                    _ => {}
                }
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("new_tunnels: first failure: {e}");
    }
    load::say(&format!(
        "done ok={ok} full={full} resumed={resumed} failed={failed} secs={:.3}",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

async fn peer(
    PeerArgs {
        cert,
        key,
        tickets,
        listen,
    }: PeerArgs,
) -> Result<(), Error> {
    let mut config = server_config(&cert, &key)?;
    match tickets {
        Tickets::On => config.ticketer = rustls::crypto::ring::Ticketer::new()?,
        Tickets::Off => {
            config.send_tls13_tickets = 0;
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        }
    }
    load::serve(
        listen,
        TlsAcceptor::from(Arc::new(config)),
        "new_tunnels peer",
    )
    .await
}

/// One floor connection: CONNECT, server handshake, client handshake, relay.
async fn floor_conn(
    mut tcp: TcpStream,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    step: Duration,
) -> Result<(), Error> {
    let (mut down, mut up) = tokio::time::timeout(step, async {
        let head = load::read_head(&mut tcp).await?;
        let mut words = head.split_whitespace();
        let target = match (words.next(), words.next()) {
            (Some("CONNECT"), Some(t)) => t.to_string(),
            _ => return Err::<_, Error>("not a CONNECT".into()),
        };
        let (host, port) = target.rsplit_once(':').ok_or("CONNECT without a port")?;
        let port: u16 = port.parse()?;
        tcp.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await?;
        let down = acceptor.accept(tcp).await?;
        let up_tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        up_tcp.set_nodelay(true)?;
        let up = connector
            .connect(ServerName::try_from(host.to_string())?, up_tcp)
            .await?;
        Ok((down, up))
    })
    .await
    .map_err(|_| "floor: setup not done in time")??;
    tokio::io::copy_bidirectional(&mut down, &mut up).await?;
    Ok(())
}

async fn floor(
    FloorArgs {
        cert,
        key,
        ca,
        listen,
        step_secs,
        resume,
    }: FloorArgs,
) -> Result<(), Error> {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(&cert, &key)?));
    let connector = TlsConnector::from(client_config(&ca, resume)?);
    let step = Duration::from_secs(step_secs);
    let failures = Arc::new(AtomicU64::new(0));
    load::accept_forever(listen, "new_tunnels floor", move |tcp| {
        let (acceptor, connector, failures) =
            (acceptor.clone(), connector.clone(), failures.clone());
        tokio::spawn(async move {
            if let Err(e) = floor_conn(tcp, acceptor, connector, step).await {
                // Only the first few: a client closing at the end is no news.
                if failures.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("new_tunnels floor: {e}");
                }
            }
        });
    })
    .await
}

fn main() -> Result<(), Error> {
    load::run(async move {
        match Cli::parse().mode {
            Mode::Client(args) => client(args).await,
            Mode::Peer(args) => peer(args).await,
            Mode::Floor(args) => floor(args).await,
        }
    })
}
