//! What pinning costs on top of plain rustls Web PKI verification.
//!
//! Run with `cargo bench --bench verify`. Groups (compare functions within a group):
//!
//! * `handshake_ecdsa_p256`, `handshake_rsa2048`: full TLS 1.3 handshakes done in
//!   memory (a rustls `ClientConnection` and `ServerConnection` in this process,
//!   records pumped through `write_tls`/`read_tls` into a `Vec`, no sockets, no
//!   resumption, no session tickets). Both ends run in the measured loop, so the
//!   server's signing and key exchange are part of every sample.
//!   - `webpki_baseline`: rustls `WebPkiServerVerifier` over a root store holding
//!     only the test CA;
//!   - `pinned_webpki_leaf` / `pinned_webpki_anchor`: `PinnedServerVerifier`,
//!     `trust = "webpki"`, pin on the leaf key / on the root (anchor) key;
//!   - `pinned_pin_only`: `PinnedServerVerifier`, `trust = "pin-only"` (leaf pin);
//!   - `pinned_webpki_leaf_per_conn`: as `pinned_webpki_leaf`, plus what
//!     `fedpin::tls::UpstreamTls::connector` and `Connector::connect` add per
//!     upstream connection: a clone of the generation's base `ClientConfig`, a
//!     new `ConnState`, and the handshake run inside `ConnState::scope` (here via
//!     `block_on` on a current-thread tokio runtime, whose own small cost is
//!     included, so this is an upper bound).
//!
//!   All pinned functions share one `PinnedServerVerifier` per config, built
//!   once; production also shares one per pin generation (per-connection
//!   context lives in `ConnState`), so this is not a shortcut.
//! * `evaluate_ecdsa_p256`, `evaluate_rsa2048`: certificate verification alone, no
//!   TLS: rustls' `WebPkiServerVerifier::verify_server_cert` (baseline),
//!   `VerifierCore::webpki_check` (fedpin's own no-pin Web PKI path),
//!   `VerifierCore::evaluate` for each pin variant, and the whole
//!   `PinnedServerVerifier::verify_server_cert` (evaluate + record + alert plumbing).
//! * `pin_lookup`: `PinSet::lookup` on a 10-peer and a 10,000-peer set, each
//!   iteration a batch of 8 lookups with the same pattern (5 hits, one of them
//!   upper-case and one with a trailing dot, and 3 misses).
//!
//! Chains are root -> intermediate -> leaf; the server sends leaf + intermediate.
//! ECDSA: three fresh P-256 keys (rcgen). RSA: an all-RSA-2048 chain (RSA root,
//! RSA intermediate, RSA leaf, PKCS#1 v1.5 SHA-256 certificate signatures, RSA-PSS
//! handshake signature) from the test-only keys in `benches/fixtures/`.

// The PKI helpers of the integration tests (tests/common).
#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{ca_params, pin};
use criterion::{criterion_group, BenchmarkGroup, Criterion, Throughput};
use fedpin::alert::AlertHub;
use fedpin::pins::{Pin, PinSet};
use fedpin::verify::{
    Basis, ConnState, PeerContext, PinnedServerVerifier, Presented, Usage, VerifierCore,
};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig};
use rustls::{ServerConnection, SupportedProtocolVersion};

/// The TLS name the leaf is issued for and the client connects to.
const HOST: &str = "bench.example.org";

/// Only TLS 1.3 is measured.
static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

#[derive(Clone, Copy)]
enum Alg {
    EcdsaP256,
    Rsa2048,
}

impl Alg {
    fn label(self) -> &'static str {
        match self {
            Alg::EcdsaP256 => "ecdsa_p256",
            Alg::Rsa2048 => "rsa2048",
        }
    }

    /// A key for one certificate of the chain (`role` picks the RSA fixture).
    fn key(self, role: &str) -> KeyPair {
        match self {
            Alg::EcdsaP256 => KeyPair::generate().expect("generate P-256 key"),
            Alg::Rsa2048 => {
                let pem = match role {
                    "root" => include_str!("fixtures/rsa2048_root.key.pem"),
                    "intermediate" => include_str!("fixtures/rsa2048_intermediate.key.pem"),
                    "leaf" => include_str!("fixtures/rsa2048_leaf.key.pem"),
                    other => unreachable!("no RSA fixture for {other}"),
                };
                KeyPair::from_pem_and_sign_algo(pem, &rcgen::PKCS_RSA_SHA256)
                    .expect("load RSA-2048 fixture key")
            }
        }
    }
}

/// Root -> intermediate -> leaf for [`HOST`].
struct Chain {
    root: CertificateDer<'static>,
    intermediate: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    leaf_key: PrivateKeyDer<'static>,
}

fn chain(alg: Alg) -> Chain {
    let root_key = alg.key("root");
    let root_params = ca_params("fedpin bench root");
    let root = root_params.self_signed(&root_key).expect("root cert");
    let root_issuer = Issuer::new(root_params, root_key);

    let inter_key = alg.key("intermediate");
    let inter_params = ca_params("fedpin bench intermediate");
    let intermediate = inter_params
        .signed_by(&inter_key, &root_issuer)
        .expect("intermediate cert");
    let inter_issuer = Issuer::new(inter_params, inter_key);

    let leaf_key = alg.key("leaf");
    let mut leaf_params = CertificateParams::new(vec![HOST.to_string()]).expect("leaf params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, HOST);
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params
        .signed_by(&leaf_key, &inter_issuer)
        .expect("leaf cert");

    Chain {
        root: root.der().clone(),
        intermediate: intermediate.der().clone(),
        leaf: leaf.der().clone(),
        leaf_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

/// A pin that matches nothing (a backup pin, or a decoy peer's pin).
fn decoy_pin(n: u64, k: u8) -> Pin {
    let mut d = [k; 32];
    d[..8].copy_from_slice(&n.to_le_bytes());
    Pin::from_digest(d)
}

/// The pin file used by the handshake and evaluate groups: the bench host with
/// `pin` (plus a backup pin that matches nothing) and `trust`, and 9 decoy peers.
fn handshake_pins(pin: Pin, trust: &str) -> Arc<PinSet> {
    let mut toml = format!(
        "version = 1\n\n[policy]\nunpinned = \"deny\"\n\n[[peer]]\nserver_name = \"{HOST}\"\npins = [\"{pin}\", \"{}\"]\ntrust = \"{trust}\"\n",
        decoy_pin(0, 0xbb)
    );
    for i in 1..10u64 {
        toml.push_str(&format!(
            "\n[[peer]]\nserver_name = \"decoy{i}.example.net:8448\"\npins = [\"{}\", \"{}\"]\n",
            decoy_pin(i, 0x11),
            decoy_pin(i, 0x22)
        ));
    }
    let mut set = PinSet::parse(&toml).unwrap_or_else(|e| panic!("bench pin file: {e}\n{toml}"));
    set.generation = 1;
    Arc::new(set)
}

/// `n` peers `peer{i}.example.org`, two pins each.
fn lookup_set(n: u64) -> PinSet {
    let mut toml = String::with_capacity(n as usize * 180 + 16);
    toml.push_str("version = 1\n");
    for i in 0..n {
        toml.push_str(&format!(
            "\n[[peer]]\nserver_name = \"peer{i}.example.org\"\npins = [\"{}\", \"{}\"]\n",
            decoy_pin(i, 0x33),
            decoy_pin(i, 0x44)
        ));
    }
    PinSet::parse(&toml).unwrap_or_else(|e| panic!("lookup pin file: {e}"))
}

/// Everything one key type needs.
struct Fixture {
    alg: Alg,
    chain: Chain,
    provider: Arc<CryptoProvider>,
    server: Arc<ServerConfig>,
    name: ServerName<'static>,
    webpki: Arc<WebPkiServerVerifier>,
    core: Arc<VerifierCore>,
    hub: AlertHub,
    pins_leaf: Arc<PinSet>,
    pins_anchor: Arc<PinSet>,
    pins_pin_only: Arc<PinSet>,
}

impl Fixture {
    fn new(alg: Alg) -> Self {
        let provider = fedpin::tls::provider();
        let chain = chain(alg);

        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(TLS13_ONLY)
            .expect("TLS 1.3 server")
            .with_no_client_auth()
            .with_single_cert(
                vec![chain.leaf.clone(), chain.intermediate.clone()],
                chain.leaf_key.clone_key(),
            )
            .expect("server cert");
        // No tickets: the client does not resume, so the server need not mint or store any.
        server.send_tls13_tickets = 0;

        let mut roots = RootCertStore::empty();
        roots.add(chain.root.clone()).expect("root into store");
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .expect("WebPkiServerVerifier");

        let hub = AlertHub::new();
        let core = Arc::new(
            VerifierCore::with_only_anchors(
                &provider,
                std::slice::from_ref(&chain.root),
                hub.clone(),
            )
            .expect("VerifierCore"),
        );

        Fixture {
            alg,
            pins_leaf: handshake_pins(pin(&chain.leaf), "webpki"),
            pins_anchor: handshake_pins(pin(&chain.root), "webpki"),
            pins_pin_only: handshake_pins(pin(&chain.leaf), "pin-only"),
            chain,
            provider,
            server: Arc::new(server),
            name: ServerName::try_from(HOST).expect("server name"),
            webpki,
            core,
            hub,
        }
    }

    fn finish(mut config: ClientConfig) -> Arc<ClientConfig> {
        config.resumption = Resumption::disabled();
        Arc::new(config)
    }

    fn baseline_client(&self) -> Arc<ClientConfig> {
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(TLS13_ONLY)
            .expect("TLS 1.3 client")
            .with_webpki_verifier(self.webpki.clone())
            .with_no_client_auth();
        Self::finish(config)
    }

    fn pinned_verifier(&self, pins: &Arc<PinSet>) -> Arc<PinnedServerVerifier> {
        Arc::new(PinnedServerVerifier::new(
            self.core.clone(),
            pins.clone(),
            PeerContext::default(),
        ))
    }

    fn pinned_client(&self, verifier: Arc<PinnedServerVerifier>) -> Arc<ClientConfig> {
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(TLS13_ONLY)
            .expect("TLS 1.3 client")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Self::finish(config)
    }

    fn intermediates(&self) -> &[CertificateDer<'static>] {
        std::slice::from_ref(&self.chain.intermediate)
    }

    /// Runs one pinned handshake outside the timing and checks it was accepted
    /// for the expected reason, so each function measures the path it names.
    fn check_pinned(&self, config: &Arc<ClientConfig>, v: &PinnedServerVerifier, want: Basis) {
        handshake(config, &self.server, &self.name);
        let rec = v.record().expect("the verifier ran");
        assert!(
            rec.is_accept() && rec.basis() == Some(want),
            "{}: expected {want:?}, got {rec:?}",
            self.alg.label()
        );
    }

    fn assert_no_alerts(&self) {
        let raised = self.hub.counters().raised.load(Ordering::Relaxed);
        assert_eq!(raised, 0, "{}: the bench raised alerts", self.alg.label());
    }
}

/// Moves every pending record from `from` to `to`; whether anything moved.
fn pump(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) -> bool {
    let mut moved = false;
    while from.wants_write() {
        buf.clear();
        from.write_tls(buf).expect("write_tls");
        let mut rd: &[u8] = buf;
        while !rd.is_empty() {
            to.read_tls(&mut rd).expect("read_tls");
            to.process_new_packets().expect("handshake failed");
        }
        moved = true;
    }
    moved
}

/// One full TLS 1.3 handshake between a fresh client and server connection.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>, name: &ServerName<'static>) {
    let mut c = Connection::Client(
        ClientConnection::new(client.clone(), name.clone()).expect("client connection"),
    );
    let mut s = Connection::Server(ServerConnection::new(server.clone()).expect("server conn"));
    let mut buf = Vec::with_capacity(8 * 1024);
    loop {
        let sent = pump(&mut c, &mut s, &mut buf);
        let answered = pump(&mut s, &mut c, &mut buf);
        if !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
        assert!(sent || answered, "handshake stalled");
    }
    black_box((&c, &s));
}

fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
}

fn bench_handshakes(c: &mut Criterion) {
    for alg in [Alg::EcdsaP256, Alg::Rsa2048] {
        let fx = Fixture::new(alg);
        let baseline = fx.baseline_client();
        handshake(&baseline, &fx.server, &fx.name);

        let v_leaf = fx.pinned_verifier(&fx.pins_leaf);
        let leaf = fx.pinned_client(v_leaf.clone());
        fx.check_pinned(&leaf, &v_leaf, Basis::PinOnValidatedPath);

        let v_anchor = fx.pinned_verifier(&fx.pins_anchor);
        let anchor = fx.pinned_client(v_anchor.clone());
        fx.check_pinned(&anchor, &v_anchor, Basis::PinOnValidatedPath);

        let v_pin_only = fx.pinned_verifier(&fx.pins_pin_only);
        let pin_only = fx.pinned_client(v_pin_only.clone());
        fx.check_pinned(&pin_only, &v_pin_only, Basis::PinOnlyLeaf);

        // What UpstreamTls::connector + Connector::connect do per connection.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime");
        let per_conn = || {
            let config = Arc::new((*leaf).clone());
            let state = ConnState::new(PeerContext::default());
            rt.block_on(state.scope(async { handshake(&config, &fx.server, &fx.name) }));
            state
        };
        let rec = per_conn().record().expect("the verifier ran in scope");
        assert!(
            rec.is_accept() && rec.basis() == Some(Basis::PinOnValidatedPath),
            "per_conn: {rec:?}"
        );

        let mut group = c.benchmark_group(format!("handshake_{}", alg.label()));
        configure(&mut group);
        group.bench_function("webpki_baseline", |b| {
            b.iter(|| handshake(&baseline, &fx.server, &fx.name))
        });
        group.bench_function("pinned_webpki_leaf", |b| {
            b.iter(|| handshake(&leaf, &fx.server, &fx.name))
        });
        group.bench_function("pinned_webpki_anchor", |b| {
            b.iter(|| handshake(&anchor, &fx.server, &fx.name))
        });
        group.bench_function("pinned_pin_only", |b| {
            b.iter(|| handshake(&pin_only, &fx.server, &fx.name))
        });
        group.bench_function("pinned_webpki_leaf_per_conn", |b| {
            b.iter(|| per_conn().record())
        });
        group.finish();
        fx.assert_no_alerts();
    }
}

fn bench_evaluate(c: &mut Criterion) {
    for alg in [Alg::EcdsaP256, Alg::Rsa2048] {
        let fx = Fixture::new(alg);
        let now = UnixTime::now();
        let leaf = &fx.chain.leaf;
        let inters = fx.intermediates();
        let name = &fx.name;

        let evaluate = |pins: &PinSet| {
            fx.core.evaluate(
                pins,
                &Presented {
                    lookup: HOST,
                    name: Some(name),
                    end_entity: leaf,
                    intermediates: inters,
                    now,
                    usage: Usage::Server,
                },
            )
        };
        for (pins, want) in [
            (&fx.pins_leaf, Basis::PinOnValidatedPath),
            (&fx.pins_anchor, Basis::PinOnValidatedPath),
            (&fx.pins_pin_only, Basis::PinOnlyLeaf),
        ] {
            let ev = evaluate(pins);
            assert!(
                ev.basis() == Some(want) && ev.reported().is_none(),
                "{}: expected {want:?}, got {:?}",
                alg.label(),
                ev
            );
        }
        fx.webpki
            .verify_server_cert(leaf, inters, name, &[], now)
            .expect("baseline accepts");
        let v_leaf = fx.pinned_verifier(&fx.pins_leaf);
        v_leaf
            .verify_server_cert(leaf, inters, name, &[], now)
            .expect("pinned verifier accepts");

        let mut group = c.benchmark_group(format!("evaluate_{}", alg.label()));
        configure(&mut group);
        group.bench_function("webpki_baseline", |b| {
            b.iter(|| {
                fx.webpki
                    .verify_server_cert(black_box(leaf), inters, name, &[], now)
                    .expect("accepts")
            })
        });
        group.bench_function("core_webpki_check", |b| {
            b.iter(|| {
                let ee = webpki::EndEntityCert::try_from(black_box(leaf)).expect("parses");
                fx.core
                    .webpki_check(Some(name), &ee, inters, now, Usage::Server)
                    .expect("accepts")
            })
        });
        group.bench_function("pinned_webpki_leaf", |b| {
            b.iter(|| evaluate(black_box(&fx.pins_leaf)))
        });
        group.bench_function("pinned_webpki_anchor", |b| {
            b.iter(|| evaluate(black_box(&fx.pins_anchor)))
        });
        group.bench_function("pinned_pin_only", |b| {
            b.iter(|| evaluate(black_box(&fx.pins_pin_only)))
        });
        group.bench_function("verifier_pinned_webpki_leaf", |b| {
            b.iter(|| {
                v_leaf
                    .verify_server_cert(black_box(leaf), inters, name, &[], now)
                    .expect("accepts")
            })
        });
        group.finish();
        fx.assert_no_alerts();
    }
}

fn bench_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("pin_lookup");
    configure(&mut group);
    group.throughput(Throughput::Elements(8));
    for n in [10u64, 10_000] {
        let set = lookup_set(n);
        assert_eq!(set.len() as u64, n);
        let queries: Vec<String> = vec![
            format!("peer{}.example.org", 0),
            format!("peer{}.example.org", n / 2),
            format!("peer{}.example.org", n - 1),
            format!("PEER{}.Example.ORG", n / 3),
            format!("peer{}.example.org.", n / 4),
            format!("peer{n}.example.org"),
            "unknown.example.net".to_string(),
            "matrix.org".to_string(),
        ];
        let hits = |set: &PinSet| queries.iter().filter(|q| set.lookup(q).is_some()).count();
        assert_eq!(hits(&set), 5, "same hit pattern for n = {n}");
        group.bench_function(format!("peers_{n}"), |b| b.iter(|| hits(black_box(&set))));
    }
    group.finish();
}

criterion_group!(benches, bench_handshakes, bench_evaluate, bench_lookup);

/// Criterion's main, plus one mode for instruction counts:
/// `FEDPIN_CALLGRIND=ALG:FUNCTION:N` (ALG `ecdsa_p256` or `rsa2048`,
/// FUNCTION `webpki_baseline`, `pinned_webpki_leaf`, `pinned_webpki_anchor`
/// or `pinned_pin_only`) runs the fixture setup and then N handshakes of that
/// function, nothing else, for `valgrind --tool=callgrind`
/// (`tests/load/pin_check_cost.sh`; N = 0 counts the setup alone).
fn main() {
    if let Ok(spec) = std::env::var("FEDPIN_CALLGRIND") {
        callgrind_run(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

fn callgrind_run(spec: &str) {
    let parts: Vec<&str> = spec.split(':').collect();
    let [alg, function, n] = parts[..] else {
        panic!("FEDPIN_CALLGRIND={spec:?}: expected ALG:FUNCTION:N");
    };
    let alg = match alg {
        "ecdsa_p256" => Alg::EcdsaP256,
        "rsa2048" => Alg::Rsa2048,
        other => panic!("FEDPIN_CALLGRIND: unknown algorithm {other:?}"),
    };
    let n: usize = n.parse().expect("FEDPIN_CALLGRIND: N must be a count");
    let fx = Fixture::new(alg);
    let (config, verifier, want) = match function {
        "webpki_baseline" => (fx.baseline_client(), None, None),
        "pinned_webpki_leaf" => {
            let v = fx.pinned_verifier(&fx.pins_leaf);
            (
                fx.pinned_client(v.clone()),
                Some(v),
                Some(Basis::PinOnValidatedPath),
            )
        }
        "pinned_webpki_anchor" => {
            let v = fx.pinned_verifier(&fx.pins_anchor);
            (
                fx.pinned_client(v.clone()),
                Some(v),
                Some(Basis::PinOnValidatedPath),
            )
        }
        "pinned_pin_only" => {
            let v = fx.pinned_verifier(&fx.pins_pin_only);
            (
                fx.pinned_client(v.clone()),
                Some(v),
                Some(Basis::PinOnlyLeaf),
            )
        }
        other => panic!("FEDPIN_CALLGRIND: unknown function {other:?}"),
    };
    for _ in 0..n {
        handshake(&config, &fx.server, &fx.name);
    }
    if let (Some(v), Some(want), true) = (verifier, want, n > 0) {
        let rec = v.record().expect("the verifier ran");
        assert!(rec.is_accept() && rec.basis() == Some(want), "{rec:?}");
    }
    fx.assert_no_alerts();
    println!("{spec}: {n} handshakes done");
}
