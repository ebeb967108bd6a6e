//! Reload at scale (issue 13, item 2): what a 10,000-peer pin file costs to
//! load and to use.
//!
//! Run with `cargo bench --bench reload`. Groups:
//!
//! * `reload_10000_peers`: a generated 10,000-peer pin file (≈ 1.4 MB; two
//!   pins per peer, `hosts` on a quarter of them, notes, ports, `expires`,
//!   `pin-only`/`report` entries, `delegation` + `host_pins` and
//!   `signing_keys` on some: what `pinctl add` writes).
//!   - `parse`: `PinSet::parse` of the text (TOML, every validation rule,
//!     the indexes) — the work of a reload; `parse_one_thread` the same on
//!     one thread; `parse_whole_toml` the baseline, the whole text read by
//!     the TOML crate alone (`PinSet::parse_whole`: no sections, no plain
//!     reader);
//!   - `parse_after_one_edit`: the parse of a reload after an edit of one
//!     peer (the other revision, after a set of this one: its unchanged
//!     sections taken, every peer still indexed), without the file system;
//!   - `store_open`: `PinStore::open` of the file on disk (read, parse),
//!     what the daemon does at start;
//!   - `store_reload`: `PinStore::reload` after the file on disk was replaced
//!     (write + rename, outside the timing) by the other of two revisions
//!     (they differ in a comment and the first peer's note, as after an
//!     edit of one peer: the other sections are reused, not parsed):
//!     open, read, the byte comparison with the set in force, the settle
//!     re-read, parse, publish (`ArcSwap`
//!     swap, generation, `watch` send), the removed-peers diff against the
//!     old set; the old set is then dropped on a thread of its own (not
//!     timed; `drop_cold` times it: a parsed set dropped after another
//!     was parsed, so its memory is no longer in the cache, as in a
//!     reload). The settle interval is 1 ns
//!     here: a running daemon sleeps 300 ms there (waiting, not working), the
//!     second read and compare are measured.
//!   - `store_reload_all_changed`: the same with revisions that differ in
//!     every peer's section (a comment in each), so the whole file is
//!     parsed: the worst case, and the baseline of `store_reload`.
//!
//!   Target (issue 13): a reload under 50 ms.
//! * `lookup_per_handshake`: the pin work of one upstream handshake at 10 and
//!   at 10,000 peers: `PinSet::lookup` alone (a batch of 8 names: 5 hits, one
//!   upper-case and one with a trailing dot, 3 misses, as in the `verify`
//!   bench), and the whole `PinnedServerVerifier::verify_server_cert` of a
//!   `pin-only` peer (SPKI hash, lookup, pin compare, record). Target: the
//!   same cost at 10 and 10,000 peers.
//!
//! After the groups, `summary` prints the medians next to their targets and
//! the 10,000/10 ratios, read back from criterion's own estimates of this
//! run (nothing is printed in test mode, `cargo test --benches`, where each
//! routine runs once).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fedpin::alert::AlertHub;
use fedpin::pin_store::{PinStore, ReloadOutcome};
use fedpin::pins::{Pin, PinSet};
use fedpin::verify::{PeerContext, PinnedServerVerifier, VerifierCore};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Peers in the large file.
const PEERS: usize = 10_000;
/// The name the verifier benches present a certificate for.
const HOST: &str = "bench-peer.example.org";
/// Criterion group names (also the summary's keys).
const RELOAD_GROUP: &str = "reload_10000_peers";
const LOOKUP_GROUP: &str = "lookup_per_handshake";

/// A pin that matches nothing: `n` in the first bytes, `k` elsewhere.
fn decoy_pin(n: u64, k: u8) -> Pin {
    let mut d = [k; 32];
    d[..8].copy_from_slice(&n.to_le_bytes());
    Pin::from_digest(d)
}

/// A valid Ed25519 public key (Matrix unpadded base64), deterministic per `n`.
fn signing_key(n: u64) -> String {
    let mut seed = [0x5au8; 32];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).expect("seed");
    use ring::signature::KeyPair as _;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(kp.public_key().as_ref())
}

/// A pin file with `n` peers (`peer{i}.example.org`) plus, first, `HOST`
/// pinned to `host_pin` (`pin-only`). `revision` goes into a comment and the
/// first peer's note, so two revisions differ in content but not in peers;
/// with `every`, also into a comment in every peer's section, so no
/// section of one revision is byte for byte one of the other.
fn pin_file(n: usize, host_pin: &Pin, revision: u64, every: bool) -> String {
    let mut s = String::with_capacity(n * 200 + 1024);
    s.push_str(&format!(
        "# fedpin pin file, generated for benches/reload.rs, revision {revision}\n\
         version = 1\n\n[policy]\nunpinned = \"deny\"\non_expired = \"webpki\"\n\n\
         [[peer]]\nserver_name = \"{HOST}\"\npins = [\n  \"{host_pin}\",\n  \"{}\",\n]\n\
         trust = \"pin-only\"\nmode = \"enforce\"\nnote = \"bench host, revision {revision}\"\n",
        decoy_pin(u64::MAX, 0x99)
    ));
    for i in 1..n as u64 {
        let name = format!("peer{i}.example.org");
        s.push('\n');
        s.push_str("[[peer]]\n");
        if every {
            s.push_str(&format!("# revision {revision}\n"));
        }
        if i % 10 == 1 {
            s.push_str(&format!("server_name = \"{name}:8448\"\n"));
        } else {
            s.push_str(&format!("server_name = \"{name}\"\n"));
        }
        let delegated = i % 50 == 11;
        if delegated {
            s.push_str(&format!("hosts = [\"matrix-federation.{name}\"]\n"));
        } else if i.is_multiple_of(4) {
            s.push_str(&format!(
                "hosts = [\"{name}\", \"matrix-federation.{name}\"]\n"
            ));
        }
        s.push_str(&format!(
            "pins = [\n  \"{}\",\n  \"{}\",\n]\n",
            decoy_pin(i, 0x33),
            decoy_pin(i, 0x44)
        ));
        let trust = if i % 20 == 7 { "pin-only" } else { "webpki" };
        let mode = if i % 25 == 3 { "report" } else { "enforce" };
        s.push_str(&format!("trust = \"{trust}\"\nmode = \"{mode}\"\n"));
        if i % 5 == 2 {
            s.push_str("expires = \"2027-06-01T00:00:00Z\"\n");
        }
        if i.is_multiple_of(3) {
            s.push_str(&format!(
                "note = \"enrolled with pinctl add {name} on 2025-06-{:02}: leaf key + issuing CA key (backup)\"\n",
                1 + i % 28
            ));
        }
        if delegated {
            s.push_str(&format!("delegation = \"matrix-federation.{name}:443\"\n"));
        }
        if i % 8 == 5 {
            s.push_str(&format!(
                "signing_keys = [\"ed25519:a_{i}={}\"]\n",
                signing_key(i)
            ));
        }
        if delegated {
            s.push_str(&format!(
                "host_pins = {{ \"{name}\" = [\"{}\", \"{}\"] }}\n",
                decoy_pin(i, 0x55),
                decoy_pin(i, 0x66)
            ));
        }
    }
    s
}

/// A self-signed certificate for `HOST` and its SPKI pin.
fn bench_cert() -> (CertificateDer<'static>, Pin) {
    let ck = rcgen::generate_simple_self_signed(vec![HOST.to_string()]).expect("rcgen");
    let der = CertificateDer::from(ck.cert.der().to_vec());
    let pin = fedpin::verify::spki_of_der(der.as_ref()).expect("bench cert parses");
    (der, pin)
}

/// Replaces `path` as `pinctl` and editors do: write a temp file, rename over.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp pin file");
    std::fs::rename(&tmp, path).expect("rename pin file");
}

/// `PinStore::reload` of `path`, replaced (outside the timing) by each of
/// `revisions` in turn; the store, for what it reused.
fn bench_store_reload(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    path: &Path,
    revisions: &[String; 2],
) -> PinStore {
    replace_file(path, &revisions[0]);
    let store = PinStore::open(path, AlertHub::new())
        .expect("opens")
        .with_settle(Duration::from_nanos(1));
    let mut next = 1usize;
    group.bench_function(name, |b| {
        b.iter_batched(
            || {
                replace_file(path, &revisions[next % 2]);
                next += 1;
            },
            |()| {
                let outcome = store.reload();
                assert!(
                    matches!(outcome, ReloadOutcome::Reloaded(_)),
                    "reload: {outcome:?}"
                );
            },
            BatchSize::PerIteration,
        )
    });
    store
}

fn bench_reload(c: &mut Criterion) {
    let (_, host_pin) = bench_cert();
    let texts = [
        pin_file(PEERS, &host_pin, 1, false),
        pin_file(PEERS, &host_pin, 2, false),
    ];
    let rewritten = [
        pin_file(PEERS, &host_pin, 1, true),
        pin_file(PEERS, &host_pin, 2, true),
    ];
    let set = PinSet::parse(&texts[0]).unwrap_or_else(|e| panic!("generated pin file: {e}"));
    assert_eq!(set.len(), PEERS);
    // Lint warnings only where `hosts` leaves out the server name's own host
    // (the delegated peers, whose own host is in `host_pins`).
    assert!(
        set.warnings
            .iter()
            .all(|w| w.message.contains("hosts does not include")),
        "unexpected lint warnings: {:?}",
        &set.warnings[..set.warnings.len().min(3)]
    );
    assert!(set.lookup(HOST).is_some() && set.lookup("peer4.example.org").is_some());
    assert!(set.lookup("matrix-federation.peer11.example.org").is_some());
    drop(set);

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("pins.toml");
    replace_file(&path, &texts[0]);

    let mut group = c.benchmark_group(RELOAD_GROUP);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Bytes(texts[0].len() as u64));
    group.bench_function("parse", |b| {
        b.iter(|| PinSet::parse(black_box(&texts[0])).expect("parses"))
    });
    // The same parse on this thread only (a one-core machine).
    group.bench_function("parse_one_thread", |b| {
        b.iter(|| PinSet::parse_on_threads(black_box(&texts[0]), 1).expect("parses"))
    });
    // The baseline: the whole text through the TOML crate, in one go on
    // this thread (what a reload cost before the sections and the plain
    // reader).
    group.bench_function("parse_whole_toml", |b| {
        b.iter(|| PinSet::parse_whole(black_box(&texts[0])).expect("parses"))
    });
    // A reload's parse alone (no file system): the other revision after
    // a set of this one, on up to one thread per core as `parse`.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let before = PinSet::parse(&texts[0]).expect("parses");
    group.bench_function("parse_after_one_edit", |b| {
        b.iter(|| {
            PinSet::parse_after_on_threads(black_box(&texts[1]), &before, threads).expect("parses")
        })
    });
    drop(before);
    group.bench_function("store_open", |b| {
        b.iter(|| PinStore::open(black_box(&path), AlertHub::new()).expect("opens"))
    });
    let store = bench_store_reload(&mut group, "store_reload", &path, &texts);
    // The same, but every section of the file changed: all of it parsed.
    let path_all = dir.path().join("pins-all.toml");
    let store_all = bench_store_reload(
        &mut group,
        "store_reload_all_changed",
        &path_all,
        &rewritten,
    );
    group.bench_function("drop_cold", |b| {
        b.iter_batched(
            || {
                let old = PinSet::parse(&texts[0]).expect("parses");
                drop(PinSet::parse(&texts[1]).expect("parses"));
                old
            },
            drop,
            BatchSize::PerIteration,
        )
    });
    group.finish();
    for s in [&store, &store_all] {
        let (ok, failed) = s.reload_counts();
        assert!(ok > 0 && failed == 0, "reloads ok={ok} failed={failed}");
    }
    // What each reload took from the set before: every section but the
    // first peer's and those whose check warns (checked again, so that the
    // warning is located in the new text); with every section changed, none.
    let set = store.current();
    let (sections, reused) = set.sections_reused().expect("in sections");
    assert_eq!(sections, PEERS);
    assert_eq!(
        reused,
        PEERS - 1 - set.warnings.len(),
        "one warning per warned peer"
    );
    let (_, reused) = store_all.current().sections_reused().expect("in sections");
    assert_eq!(reused, 0);
}

fn bench_lookup(c: &mut Criterion) {
    let (cert, host_pin) = bench_cert();
    let provider = fedpin::tls::provider();
    let name = ServerName::try_from(HOST).expect("server name");
    let now = UnixTime::now();
    let mut group = c.benchmark_group(LOOKUP_GROUP);
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for n in [10usize, PEERS] {
        let set = Arc::new(PinSet::parse(&pin_file(n, &host_pin, 1, false)).expect("parses"));
        assert_eq!(set.len(), n);
        let queries: Vec<String> = vec![
            HOST.to_string(),
            format!("peer{}.example.org", n / 2),
            format!("peer{}.example.org", n - 1),
            format!("PEER{}.Example.ORG", n / 3),
            format!("peer{}.example.org.", n / 4 + 1),
            format!("peer{n}.example.org"),
            "unknown.example.net".to_string(),
            "matrix.org".to_string(),
        ];
        let hits = |set: &PinSet| queries.iter().filter(|q| set.lookup(q).is_some()).count();
        assert_eq!(hits(&set), 5, "same hit pattern for n = {n}");
        group.throughput(Throughput::Elements(8));
        group.bench_function(format!("lookup_x8_{n}"), |b| {
            b.iter(|| hits(black_box(&set)))
        });

        let hub = AlertHub::new();
        let core = Arc::new(
            VerifierCore::with_only_anchors(&provider, std::slice::from_ref(&cert), hub.clone())
                .expect("VerifierCore"),
        );
        let verifier = PinnedServerVerifier::new(core, set.clone(), PeerContext::default());
        verifier
            .verify_server_cert(&cert, &[], &name, &[], now)
            .expect("the pinned leaf is accepted");
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("verifier_pin_only_{n}"), |b| {
            b.iter(|| {
                verifier
                    .verify_server_cert(black_box(&cert), &[], &name, &[], now)
                    .expect("accepts")
            })
        });
        let raised = hub
            .counters()
            .raised
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(raised, 0, "the lookup bench raised alerts");
    }
    group.finish();
}

/// Where criterion writes its estimates (as criterion itself decides).
fn criterion_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d).join("criterion");
    }
    // target/<profile>/deps/reload-<hash>
    std::env::current_exe()
        .ok()
        .and_then(|e| e.ancestors().nth(3).map(|t| t.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// The median (ns) criterion estimated for `group/function` in this run.
fn median_ns(group: &str, function: &str, since: SystemTime) -> Option<f64> {
    let file = criterion_dir()
        .join(group)
        .join(function)
        .join("new/estimates.json");
    let fresh = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t >= since);
    if !fresh {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

/// When this run started (estimates older than this are a previous run's).
static START: std::sync::OnceLock<SystemTime> = std::sync::OnceLock::new();

fn start_clock(_: &mut Criterion) {
    let _ = START.get_or_init(SystemTime::now);
}

fn summary(_: &mut Criterion) {
    let since = *START.get_or_init(SystemTime::now);
    // Test mode (`cargo test --benches`): each routine ran once, nothing to report.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let ms = |f: &str| median_ns(RELOAD_GROUP, f, since).map(|ns| ns / 1e6);
    let ns = |f: &str| median_ns(LOOKUP_GROUP, f, since);
    let show = |v: Option<f64>, unit: &str| match v {
        Some(x) => format!("{x:.2} {unit}"),
        None => "not measured in this run".to_string(),
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_string(),
    };
    println!();
    println!("reload at scale ({PEERS} peers; medians of this run; target: a reload under 50 ms)");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "  PinSet::parse          {}   (on up to {} threads; one thread: {}, ratio {})",
        show(ms("parse"), "ms"),
        cores.min(4),
        show(ms("parse_one_thread"), "ms"),
        ratio(ms("parse"), ms("parse_one_thread"))
    );
    println!(
        "  PinSet::parse_whole    {}   (the baseline: all of it through the TOML crate on one thread; parse/baseline {})",
        show(ms("parse_whole_toml"), "ms"),
        ratio(ms("parse"), ms("parse_whole_toml"))
    );
    println!(
        "  parse after one edit   {}   (the sections of the set before reused; ratio to parse {})",
        show(ms("parse_after_one_edit"), "ms"),
        ratio(ms("parse_after_one_edit"), ms("parse"))
    );
    println!("  PinStore::open         {}", show(ms("store_open"), "ms"));
    println!(
        "  PinStore::reload       {}   (target < 50 ms; one peer's section edited, the rest reused)",
        show(ms("store_reload"), "ms")
    );
    println!(
        "  PinStore::reload       {}   (every section changed: all parsed; ratio {})",
        show(ms("store_reload_all_changed"), "ms"),
        ratio(ms("store_reload"), ms("store_reload_all_changed"))
    );
    println!(
        "  drop of the old set    {}   (on its own thread, after the publish)",
        show(ms("drop_cold"), "ms")
    );
    println!("per-handshake pin work, 10 vs {PEERS} peers (target: the same)");
    let (l10, l10k) = (ns("lookup_x8_10"), ns(&format!("lookup_x8_{PEERS}")));
    let (v10, v10k) = (
        ns("verifier_pin_only_10"),
        ns(&format!("verifier_pin_only_{PEERS}")),
    );
    println!(
        "  PinSet::lookup x8      {} vs {}   ratio {PEERS}/10 = {}",
        show(l10, "ns"),
        show(l10k, "ns"),
        ratio(l10k, l10)
    );
    println!(
        "  verify_server_cert     {} vs {}   ratio {PEERS}/10 = {}",
        show(v10, "ns"),
        show(v10k, "ns"),
        ratio(v10k, v10)
    );
}

criterion_group!(benches, start_clock, bench_reload, bench_lookup, summary);
criterion_main!(benches);
