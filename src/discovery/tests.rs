//! Discovery tests, on loopback.

use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WK_HOST: &str = "wk.fedpin.test";

// ----- server-name parsing ------------------------------------------

fn sn(s: &str) -> ServerName {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn dns(host: &str, port: Option<u16>) -> ServerName {
    ServerName {
        host: Host::Dns(host.to_owned()),
        port,
    }
}

fn bad(s: &str) -> String {
    match s.parse::<ServerName>() {
        Ok(v) => panic!("{s:?} should not parse, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn parses_dns_names() {
    assert_eq!(sn("example.org"), dns("example.org", None));
    assert_eq!(sn("example.org:8448"), dns("example.org", Some(8448)));
    assert_eq!(sn("localhost"), dns("localhost", None));
    assert_eq!(sn("a-b.c0"), dns("a-b.c0", None));
    assert_eq!(
        sn("matrix.example.org:1"),
        dns("matrix.example.org", Some(1))
    );
    assert_eq!(sn("x.y:65535"), dns("x.y", Some(65535)));
    assert_eq!(sn("x.y:08448"), dns("x.y", Some(8448)));
    assert_eq!(sn("1.2.3.example"), dns("1.2.3.example", None));
}

#[test]
fn lowercases_and_strips_trailing_dot() {
    assert_eq!(sn("EXAMPLE.Org"), dns("example.org", None));
    assert_eq!(sn("example.org."), dns("example.org", None));
    assert_eq!(sn("Example.ORG.:443"), dns("example.org", Some(443)));
}

#[test]
fn parses_ip_literals() {
    let v4: IpAddr = "192.0.2.1".parse().unwrap();
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    let lo6: IpAddr = "::1".parse().unwrap();
    assert_eq!(
        sn("192.0.2.1"),
        ServerName {
            host: Host::Ip(v4),
            port: None
        }
    );
    assert_eq!(
        sn("192.0.2.1:8449"),
        ServerName {
            host: Host::Ip(v4),
            port: Some(8449)
        }
    );
    assert_eq!(
        sn("[::1]"),
        ServerName {
            host: Host::Ip(lo6),
            port: None
        }
    );
    assert_eq!(
        sn("[::1]:8448"),
        ServerName {
            host: Host::Ip(lo6),
            port: Some(8448)
        }
    );
    assert_eq!(
        sn("[2001:DB8::1]:443"),
        ServerName {
            host: Host::Ip(v6),
            port: Some(443)
        }
    );
    assert!(matches!(
        sn("[::ffff:192.0.2.1]").host,
        Host::Ip(IpAddr::V6(_))
    ));
}

#[test]
fn display_is_canonical_and_round_trips() {
    for (input, canonical) in [
        ("example.org", "example.org"),
        ("EXAMPLE.org.:8448", "example.org:8448"),
        ("x.y:08448", "x.y:8448"),
        ("192.0.2.1", "192.0.2.1"),
        ("192.0.2.1:80", "192.0.2.1:80"),
        ("[::1]:8448", "[::1]:8448"),
        ("[2001:DB8:0::1]", "[2001:db8::1]"),
    ] {
        let parsed = sn(input);
        assert_eq!(parsed.to_string(), canonical, "{input}");
        assert_eq!(sn(canonical), parsed, "{canonical} round trip");
    }
    assert_eq!(Host::Ip("::1".parse().unwrap()).to_string(), "::1");
}

#[test]
fn rejects_bad_names_with_clear_messages() {
    let cases: &[(&str, &str)] = &[
        ("", "it is empty"),
        (":8448", "host part is empty"),
        ("example.org:", "port after ':' is empty"),
        ("example.org:0", "\"0\" is out of range"),
        ("example.org:65536", "\"65536\" is out of range"),
        ("example.org:99999999", "out of range"),
        ("example.org:80a", "\"80a\" is not a decimal number"),
        ("example.org:-1", "not a decimal number"),
        ("a b", "invalid character ' ' in host \"a b\""),
        ("exa_mple.org", "invalid character '_'"),
        ("ex\u{e4}mple.org", "invalid character '\u{e4}'"),
        ("::1", "must be enclosed in brackets"),
        ("2001:db8::1:8448", "must be enclosed in brackets"),
        ("[::1", "missing its closing ']'"),
        ("[::1]x", "unexpected \"x\" after the IPv6 literal"),
        ("[::1]:", "port after ':' is empty"),
        ("[::1]:0", "out of range"),
        ("[]", "between the brackets is empty"),
        ("[fe80::1%eth0]", "invalid character '%' in IPv6 literal"),
        ("[1.2.3.4]", "\"1.2.3.4\" is not a valid IPv6 address"),
        ("[::g]", "invalid character 'g'"),
        ("256.1.1.1", "not a valid dotted quad"),
        ("1.2.3", "not a valid dotted quad"),
        ("1.2.3.4.", "not a valid dotted quad"),
        (".", "not a valid dotted quad"),
        ("a..b", "empty label"),
        (".example.org", "empty label"),
        ("example.org..", "empty label"),
        ("-a.org", "label \"-a\""),
        ("a-.org", "starts or ends with '-'"),
        ("example.123", "last label \"123\""),
    ];
    for (input, needle) in cases {
        let msg = bad(input);
        assert!(
            msg.starts_with(&format!("invalid server name {input:?}: ")),
            "{input:?}: {msg}"
        );
        assert!(msg.contains(needle), "{input:?}: {msg:?} lacks {needle:?}");
    }
    let long_label = format!("{}.org", "a".repeat(64));
    assert!(bad(&long_label).contains("longer than 63"));
    let long_name = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(63),
    ]
    .join(".");
    assert!(bad(&long_name).contains("at most 253"));
    let too_long = "a".repeat(256);
    assert!(bad(&too_long).contains("maximum is 255"));
}

// ----- parse_well_known ---------------------------------------------

fn wk_err(body: &[u8]) -> String {
    match parse_well_known(body) {
        Ok(v) => panic!("{:?} should fail, got {v:?}", String::from_utf8_lossy(body)),
        Err(e @ DiscoveryError::WellKnownBody { .. }) => e.to_string(),
        Err(e) => panic!("wrong error kind {e:?}"),
    }
}

#[test]
fn parse_well_known_accepts_valid_bodies() {
    assert_eq!(
        parse_well_known(br#"{"m.server": "matrix.example.org:443"}"#).unwrap(),
        dns("matrix.example.org", Some(443))
    );
    assert_eq!(
        parse_well_known(br#"{"other": [1, 2], "m.server": "Matrix.Example.org", "x": null}"#)
            .unwrap(),
        dns("matrix.example.org", None)
    );
    assert_eq!(
        parse_well_known(b" {\"m.server\":\"[::1]:8448\"}\n").unwrap(),
        sn("[::1]:8448")
    );
}

#[test]
fn parse_well_known_rejects_bad_bodies() {
    assert!(wk_err(b"").contains("not valid JSON"));
    assert!(wk_err(b"<html>").contains("not valid JSON"));
    assert!(wk_err(b"\xff\xfe").contains("not valid JSON"));
    assert!(wk_err(br#"["m.server"]"#).contains("not a JSON object"));
    assert!(wk_err(br#""example.org""#).contains("not a JSON object"));
    assert!(wk_err(br#"{}"#).contains("m.server is missing"));
    assert!(wk_err(br#"{"m.server": 8448}"#).contains("m.server is not a string"));
    assert!(wk_err(br#"{"m.server": null}"#).contains("m.server is not a string"));
    assert!(wk_err(br#"{"m.server": {"a": 1}}"#).contains("m.server is not a string"));
    let msg = wk_err(br#"{"m.server": "bad host:1"}"#);
    assert!(
        msg.contains("invalid server name \"bad host:1\": invalid character ' '"),
        "{msg}"
    );
    assert!(wk_err(br#"{"m.server": ""}"#).contains("it is empty"));
    assert!(wk_err(br#"{"m.server": "example.org:0"}"#).contains("out of range"));
}

// ----- pick_srv -------------------------------------------------------

fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvTarget {
    SrvTarget {
        priority,
        weight,
        port,
        target: target.to_owned(),
    }
}

#[test]
fn pick_srv_orders_by_priority_then_weight() {
    assert_eq!(pick_srv(&[]), None);
    let recs = [
        srv(20, 100, 1, "low-prio.test"),
        srv(10, 5, 2, "light.test"),
        srv(10, 50, 3, "heavy.test"),
        srv(10, 50, 4, "heavy-tie.test"),
    ];
    assert_eq!(pick_srv(&recs), Some(&recs[2]));
    let recs = [srv(5, 0, 1, "a.test"), srv(5, 0, 2, "b.test")];
    assert_eq!(pick_srv(&recs), Some(&recs[0]), "ties go to the first");
    let recs = [srv(65535, 65535, 9, "only.test")];
    assert_eq!(pick_srv(&recs), Some(&recs[0]));
}

#[test]
fn pick_srv_ignores_unavailable_targets() {
    assert_eq!(pick_srv(&[srv(0, 0, 0, ".")]), None);
    assert_eq!(pick_srv(&[srv(0, 0, 8448, ".")]), None);
    assert_eq!(pick_srv(&[srv(0, 0, 8448, "")]), None);
    assert_eq!(pick_srv(&[srv(0, 0, 0, "a.test")]), None, "port 0");
    let recs = [srv(0, 0, 8448, "."), srv(10, 0, 8449, "real.test")];
    assert_eq!(pick_srv(&recs), Some(&recs[1]));
}

#[test]
fn normalizes_srv_targets() {
    assert_eq!(normalize_srv_target("."), ".");
    assert_eq!(normalize_srv_target("Fed.Example.ORG."), "fed.example.org");
    assert_eq!(normalize_srv_target("fed.example.org"), "fed.example.org");
}

// ----- misc -------------------------------------------------------------

#[test]
fn default_options() {
    let o = DiscoveryOptions::default();
    assert_eq!(o.timeout, Duration::from_secs(10));
    assert_eq!(o.well_known_port, 443);
    assert!(o.extra_roots.is_empty());
    assert!(o.resolver.is_none());
    assert!(o.well_known_addr_override.is_none());
    assert!(format!("{o:?}").contains("system"));
}

#[test]
fn error_and_via_messages() {
    let e = DiscoveryError::WellKnown {
        url: well_known_url("example.org", 443),
        reason: "m.server is not a string".into(),
    };
    assert_eq!(
        e.to_string(),
        "well-known at https://example.org/.well-known/matrix/server: m.server is not a string"
    );
    let e = DiscoveryError::Timeout {
        step: "DNS SRV lookup for _matrix-fed._tcp.x.test".into(),
        after: Duration::from_millis(1500),
    };
    assert_eq!(
        e.to_string(),
        "DNS SRV lookup for _matrix-fed._tcp.x.test timed out after 1.5s"
    );
    assert_eq!(
        well_known_url("x.test", 8443),
        "https://x.test:8443/.well-known/matrix/server"
    );
    assert_eq!(
        ResolvedVia::WellKnown {
            delegated: "m.x.test:443".into()
        }
        .to_string(),
        "well-known delegation to m.x.test:443"
    );
    assert_eq!(ResolvedVia::DefaultPort.to_string(), "default port 8448");
}

#[test]
fn resolve_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let name = sn("example.org");
    let opts = DiscoveryOptions::default();
    let fut = resolve(&name, &opts);
    assert_send(&fut);
    let fut = fetch_well_known("example.org", &opts);
    assert_send(&fut);
}

// ----- stub DNS ---------------------------------------------------------

/// Answers from a table; unknown names have no records. Records queries.
#[derive(Default)]
struct StubSrv {
    answers: HashMap<String, Result<Vec<SrvTarget>, String>>,
    hang: bool,
    calls: Mutex<Vec<String>>,
}

impl StubSrv {
    fn with(mut self, name: &str, records: Vec<SrvTarget>) -> Self {
        self.answers.insert(name.to_owned(), Ok(records));
        self
    }
    fn failing(mut self, name: &str, reason: &str) -> Self {
        self.answers.insert(name.to_owned(), Err(reason.to_owned()));
        self
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl SrvLookup for StubSrv {
    fn lookup_srv<'a>(&'a self, name: &'a str) -> SrvFuture<'a> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(name.to_owned());
            if self.hang {
                std::future::pending::<()>().await;
            }
            match self.answers.get(name) {
                Some(Ok(records)) => Ok(records.clone()),
                Some(Err(reason)) => Err(DiscoveryError::Srv {
                    name: name.to_owned(),
                    reason: reason.clone(),
                }),
                None => Ok(Vec::new()),
            }
        })
    }
}

// ----- local HTTPS well-known server ------------------------------------

struct TestPki {
    ca_anchor: TrustAnchor<'static>,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

fn mint(ca_cn: &str, leaf_name: &str) -> TestPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, ca_cn);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec![leaf_name.to_owned()]).unwrap();
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

    let ca_anchor = webpki::anchor_from_trusted_cert(ca_cert.der())
        .unwrap()
        .to_owned();
    TestPki {
        ca_anchor,
        chain: vec![leaf.der().clone()],
        key_der: leaf_key.serialize_der(),
    }
}

/// What the well-known server saw.
#[derive(Default)]
struct Seen {
    sni: Vec<Option<String>>,
    requests: Vec<String>,
}

/// Serves one canned HTTP response (or nothing if `response` is None)
/// over TLS on 127.0.0.1:0, for any number of connections.
async fn serve(pki: &TestPki, response: Option<String>) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key_der.clone()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(pki.chain.clone(), key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let seen2 = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let response = response.clone();
            let seen = Arc::clone(&seen2);
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().map(str::to_owned);
                seen.lock().unwrap().sni.push(sni);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .requests
                    .push(String::from_utf8_lossy(&buf).into_owned());
                match response {
                    Some(r) => {
                        let _ = tls.write_all(r.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            });
        }
    });
    (addr, seen)
}

fn http(status: &str, body: &str) -> Option<String> {
    Some(format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

fn redirect(location: &str) -> Option<String> {
    Some(format!(
        "HTTP/1.1 301 Moved Permanently\r\nLocation: {location}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    ))
}

#[tokio::test]
async fn well_known_redirects_are_followed_and_every_hop_is_reported() {
    let pki = mint("fedpin test CA", WK_HOST);
    let (front, _) = serve(
        &pki,
        redirect("https://wk.fedpin.test:4443/elsewhere/server.json"),
    )
    .await;
    let (second, seen) = serve(
        &pki,
        http("200 OK", r#"{"m.server": "fed.wk.fedpin.test:8448"}"#),
    )
    .await;
    let stub = Arc::new(StubSrv::default());
    let mut o = opts(&pki, front, &stub);
    o.connect_to = vec![format!("wk.fedpin.test:4443:{second}").parse().unwrap()];
    let wk = fetch_well_known(WK_HOST, &o).await.unwrap();
    assert_eq!(wk.delegated.to_string(), "fed.wk.fedpin.test:8448");
    let hops: Vec<_> = wk
        .hops
        .iter()
        .map(|h| (h.host.as_str(), h.port, h.path.as_str(), h.status))
        .collect();
    assert_eq!(
        hops,
        vec![
            (WK_HOST, front.port(), WELL_KNOWN_PATH, 301),
            (WK_HOST, 4443, "/elsewhere/server.json", 200),
        ]
    );
    assert!(wk.hops.iter().all(|h| !h.chain.is_empty()));
    assert!(seen.lock().unwrap().requests[0].starts_with("GET /elsewhere/server.json "));
}

#[test]
fn connect_to_rules_parse() {
    let c: ConnectTo = "Example.ORG.:443:127.0.0.1:8443".parse().unwrap();
    assert_eq!(
        (c.host.as_str(), c.port, c.addr),
        ("example.org", 443, "127.0.0.1:8443".parse().unwrap())
    );
    let c: ConnectTo = "example.org:443:[::1]:8443".parse().unwrap();
    assert_eq!(c.addr, "[::1]:8443".parse().unwrap());
    for bad in [
        "example.org:443",
        "example.org:0:127.0.0.1:1",
        "a:1:nope:1",
        "",
    ] {
        assert!(bad.parse::<ConnectTo>().is_err(), "{bad}");
    }
}

fn opts(pki: &TestPki, addr: SocketAddr, stub: &Arc<StubSrv>) -> DiscoveryOptions {
    DiscoveryOptions {
        extra_roots: vec![pki.ca_anchor.clone()],
        timeout: Duration::from_secs(5),
        resolver: Some(Arc::clone(stub) as Arc<dyn SrvLookup>),
        well_known_port: addr.port(),
        well_known_addr_override: Some(addr),
        connect_to: Vec::new(),
    }
}

/// An address on which nothing listens.
async fn closed_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn fed(host: &str) -> String {
    format!("_matrix-fed._tcp.{host}")
}

fn legacy(host: &str) -> String {
    format!("_matrix._tcp.{host}")
}

// ----- resolve end to end -------------------------------------------------

#[tokio::test]
async fn ip_literals_and_explicit_ports_skip_discovery() {
    let stub = Arc::new(StubSrv::default());
    let pki = mint("fedpin test CA", WK_HOST);
    let o = opts(&pki, closed_addr().await, &stub);

    let r = resolve(&sn("[::1]"), &o).await.unwrap();
    assert_eq!(
        (r.connect_host.as_str(), r.tls_name.as_str(), r.port, &r.via),
        ("::1", "::1", 8448, &ResolvedVia::IpLiteral)
    );
    let r = resolve(&sn("192.0.2.7:8449"), &o).await.unwrap();
    assert_eq!(
        (r.connect_host.as_str(), r.tls_name.as_str(), r.port, &r.via),
        ("192.0.2.7", "192.0.2.7", 8449, &ResolvedVia::IpLiteral)
    );
    let r = resolve(&sn("Example.ORG:443"), &o).await.unwrap();
    assert_eq!(r.server_name, dns("example.org", Some(443)));
    assert_eq!(
        (r.connect_host.as_str(), r.tls_name.as_str(), r.port, &r.via),
        (
            "example.org",
            "example.org",
            443,
            &ResolvedVia::ExplicitPort
        )
    );
    assert!(stub.calls().is_empty());
}

#[tokio::test]
async fn well_known_delegation_with_port() {
    let pki = mint("fedpin test CA", WK_HOST);
    let (addr, seen) = serve(
        &pki,
        http(
            "200 OK",
            r#"{"m.server": "Matrix.wk.fedpin.test:8449", "extra": true}"#,
        ),
    )
    .await;
    let stub = Arc::new(
        StubSrv::default().with(&fed(WK_HOST), vec![srv(0, 0, 1, "must-not-be-used.test")]),
    );
    let r = resolve(&sn(WK_HOST), &opts(&pki, addr, &stub))
        .await
        .unwrap();
    assert_delegated_direct(
        &r,
        ("matrix.wk.fedpin.test", 8449),
        "matrix.wk.fedpin.test:8449",
    );
    assert!(
        stub.calls().is_empty(),
        "no SRV after explicit delegated port"
    );
    let wk = r.well_known.as_ref().expect("the delegation is reported");
    assert_eq!(wk.hops.len(), 1);
    assert_eq!(
        (wk.hops[0].host.as_str(), wk.hops[0].status),
        (WK_HOST, 200)
    );
    assert!(
        !wk.hops[0].chain.is_empty(),
        "the front's chain is captured"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.sni, vec![Some(WK_HOST.to_owned())]);
    let req = &seen.requests[0];
    assert!(
        req.starts_with("GET /.well-known/matrix/server HTTP/1.1\r\n"),
        "{req}"
    );
    assert!(
        req.to_ascii_lowercase()
            .contains(&format!("\r\nhost: {WK_HOST}:{}\r\n", addr.port())),
        "{req}"
    );
}

#[tokio::test]
async fn well_known_delegation_without_port_uses_srv_of_delegated_name() {
    let pki = mint("fedpin test CA", WK_HOST);
    let (addr, _) = serve(&pki, http("200 OK", r#"{"m.server": "deleg.fedpin.test"}"#)).await;
    let stub = Arc::new(
        StubSrv::default()
            .with(
                &fed("deleg.fedpin.test"),
                vec![
                    srv(20, 100, 1111, "backup.fedpin.test"),
                    srv(10, 1, 2222, "light.fedpin.test"),
                    srv(10, 9, 3333, "fed1.fedpin.test"),
                ],
            )
            .with(&fed(WK_HOST), vec![srv(0, 0, 1, "wrong.test")]),
    );
    let r = resolve(&sn(WK_HOST), &opts(&pki, addr, &stub))
        .await
        .unwrap();
    assert_eq!(r.connect_host, "fed1.fedpin.test");
    assert_eq!(r.port, 3333);
    assert_eq!(r.tls_name, "deleg.fedpin.test");
    assert_eq!(
        r.via,
        ResolvedVia::Srv {
            record: fed("deleg.fedpin.test")
        }
    );
    assert_eq!(stub.calls(), vec![fed("deleg.fedpin.test")]);
}

#[tokio::test]
async fn well_known_delegation_falls_back_to_legacy_srv_then_8448() {
    let pki = mint("fedpin test CA", WK_HOST);
    let (addr, _) = serve(&pki, http("200 OK", r#"{"m.server": "deleg.fedpin.test"}"#)).await;

    let stub = Arc::new(StubSrv::default().with(
        &legacy("deleg.fedpin.test"),
        vec![srv(0, 0, 4444, "old.fedpin.test.")],
    ));
    let r = resolve(&sn(WK_HOST), &opts(&pki, addr, &stub))
        .await
        .unwrap();
    assert_eq!(
        (r.connect_host.as_str(), r.port, r.tls_name.as_str()),
        ("old.fedpin.test", 4444, "deleg.fedpin.test")
    );
    assert_eq!(
        r.via,
        ResolvedVia::Srv {
            record: legacy("deleg.fedpin.test")
        }
    );
    assert_eq!(
        stub.calls(),
        vec![fed("deleg.fedpin.test"), legacy("deleg.fedpin.test")]
    );

    // "." target on the new name means unavailable: treated as no records.
    let stub =
        Arc::new(StubSrv::default().with(&fed("deleg.fedpin.test"), vec![srv(0, 0, 0, ".")]));
    let r = resolve(&sn(WK_HOST), &opts(&pki, addr, &stub))
        .await
        .unwrap();
    assert_delegated_direct(&r, ("deleg.fedpin.test", 8448), "deleg.fedpin.test");
}

/// `r` is WK_HOST delegated by its well-known document (`m.server` =
/// `delegated`) straight to `host:port`, with no SRV record used.
fn assert_delegated_direct(r: &Resolved, (host, port): (&str, u16), delegated: &str) {
    let via = ResolvedVia::WellKnown {
        delegated: delegated.into(),
    };
    let want = Resolved {
        well_known: r.well_known.clone(),
        ..Resolved::direct(&dns(WK_HOST, None), host, port, via)
    };
    assert_eq!(r, &want);
}

#[tokio::test]
async fn well_known_delegation_to_ip_literal() {
    let pki = mint("fedpin test CA", WK_HOST);
    let (addr, _) = serve(&pki, http("200 OK", r#"{"m.server": "[::1]"}"#)).await;
    let stub = Arc::new(StubSrv::default());
    let r = resolve(&sn(WK_HOST), &opts(&pki, addr, &stub))
        .await
        .unwrap();
    assert_eq!(
        (r.connect_host.as_str(), r.tls_name.as_str(), r.port),
        ("::1", "::1", 8448)
    );
    assert_eq!(
        r.via,
        ResolvedVia::WellKnown {
            delegated: "[::1]".into()
        }
    );
    assert!(stub.calls().is_empty());
}

#[tokio::test]
async fn no_well_known_and_no_srv_gives_8448() {
    let pki = mint("fedpin test CA", WK_HOST);
    let stub = Arc::new(StubSrv::default());
    let o = opts(&pki, closed_addr().await, &stub);
    let r = resolve(&sn(WK_HOST), &o).await.unwrap();
    assert_eq!(
        r,
        Resolved::direct(&dns(WK_HOST, None), WK_HOST, 8448, ResolvedVia::DefaultPort)
    );
    assert_eq!(stub.calls(), vec![fed(WK_HOST), legacy(WK_HOST)]);
    let err = fetch_well_known(WK_HOST, &o).await.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "well-known at https://{WK_HOST}:{}",
            o.well_known_port
        )) && err.contains("TCP connect"),
        "{err}"
    );
}

#[tokio::test]
async fn well_known_404_falls_back_to_srv_of_hostname() {
    let pki = mint("fedpin test CA", WK_HOST);
    let (addr, _) = serve(&pki, http("404 Not Found", "nope")).await;
    let stub = Arc::new(
        StubSrv::default().with(&fed(WK_HOST), vec![srv(1, 1, 8450, "Host1.fedpin.test")]),
    );
    let o = opts(&pki, addr, &stub);
    let r = resolve(&sn(WK_HOST), &o).await.unwrap();
    assert_eq!(
        (r.connect_host.as_str(), r.port, r.tls_name.as_str()),
        ("host1.fedpin.test", 8450, WK_HOST)
    );
    assert_eq!(
        r.via,
        ResolvedVia::Srv {
            record: fed(WK_HOST)
        }
    );
    let err = fetch_well_known(WK_HOST, &o).await.unwrap_err().to_string();
    assert!(
        err.contains("HTTP status 404 Not Found, expected 200 OK"),
        "{err}"
    );
}

#[tokio::test]
async fn well_known_from_untrusted_ca_is_treated_as_absent() {
    let trusted = mint("fedpin trusted CA", WK_HOST);
    let rogue = mint("fedpin rogue CA", WK_HOST);
    let (addr, seen) = serve(&rogue, http("200 OK", r#"{"m.server": "evil.test:1"}"#)).await;
    let stub = Arc::new(StubSrv::default());
    let o = opts(&trusted, addr, &stub);
    let r = resolve(&sn(WK_HOST), &o).await.unwrap();
    assert_eq!(r.via, ResolvedVia::DefaultPort);
    assert_eq!((r.connect_host.as_str(), r.port), (WK_HOST, 8448));
    assert!(seen.lock().unwrap().requests.is_empty(), "no request sent");
    let err = fetch_well_known(WK_HOST, &o).await.unwrap_err().to_string();
    assert!(err.contains("TLS handshake with"), "{err}");
}

#[tokio::test]
async fn well_known_cert_for_other_name_is_treated_as_absent() {
    let pki = mint("fedpin test CA", "other.fedpin.test");
    let (addr, _) = serve(&pki, http("200 OK", r#"{"m.server": "evil.test:1"}"#)).await;
    let stub = Arc::new(StubSrv::default());
    let r = resolve(&sn(WK_HOST), &opts(&pki, addr, &stub))
        .await
        .unwrap();
    assert_eq!(r.via, ResolvedVia::DefaultPort);
}

#[tokio::test]
async fn well_known_bad_bodies_are_treated_as_absent() {
    let pki = mint("fedpin test CA", WK_HOST);
    for (response, needle) in [
        (http("200 OK", "not json"), "body is not valid JSON"),
        (
            http("200 OK", r#"{"m.server": 1}"#),
            "m.server is not a string",
        ),
        (
            http("200 OK", r#"{"m.server": "a b"}"#),
            "invalid server name \"a b\"",
        ),
        (http("302 Found", ""), "without a Location"),
        (
            redirect("http://wk.fedpin.test/.well-known/matrix/server"),
            "only https:// locations are followed",
        ),
        (redirect("/.well-known/matrix/server"), "redirect loop"),
        (
            http("200 OK", &" ".repeat(WELL_KNOWN_MAX_BODY + 1)),
            "larger than 64 KiB",
        ),
        (
            Some(format!(
                "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{}",
                " ".repeat(WELL_KNOWN_MAX_BODY + 1)
            )),
            "larger than 64 KiB",
        ),
    ] {
        let (addr, _) = serve(&pki, response).await;
        let stub = Arc::new(StubSrv::default());
        let o = opts(&pki, addr, &stub);
        let r = resolve(&sn(WK_HOST), &o).await.unwrap();
        assert_eq!(r.via, ResolvedVia::DefaultPort, "{needle}");
        let err = fetch_well_known(WK_HOST, &o).await.unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "well-known at https://{WK_HOST}:{}/.well-known/matrix/server: ",
                addr.port()
            )),
            "{err}"
        );
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
}

#[tokio::test]
async fn well_known_timeout_is_treated_as_absent() {
    let pki = mint("fedpin test CA", WK_HOST);
    let (addr, _) = serve(&pki, None).await;
    let stub = Arc::new(StubSrv::default());
    let mut o = opts(&pki, addr, &stub);
    o.timeout = Duration::from_millis(300);
    let r = resolve(&sn(WK_HOST), &o).await.unwrap();
    assert_eq!(r.via, ResolvedVia::DefaultPort);
    let err = fetch_well_known(WK_HOST, &o).await.unwrap_err();
    assert!(matches!(err, DiscoveryError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("timed out after 300ms"), "{err}");
}

#[tokio::test]
async fn srv_failures_are_errors() {
    let pki = mint("fedpin test CA", WK_HOST);
    let stub = Arc::new(StubSrv::default().failing(&fed(WK_HOST), "SERVFAIL"));
    let o = opts(&pki, closed_addr().await, &stub);
    let err = resolve(&sn(WK_HOST), &o).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("DNS SRV lookup for {} failed: SERVFAIL", fed(WK_HOST))
    );

    let stub = Arc::new(StubSrv {
        hang: true,
        ..StubSrv::default()
    });
    let mut o = opts(&pki, closed_addr().await, &stub);
    o.timeout = Duration::from_millis(200);
    let err = resolve(&sn(WK_HOST), &o).await.unwrap_err();
    assert!(
        matches!(&err, DiscoveryError::Timeout { step, .. } if step.contains(&fed(WK_HOST))),
        "{err:?}"
    );
}
