//! `pinctl`: the operator's CLI for the fedpin pin file.
//!
//! Exit codes: 0 ok, 1 mismatch or lint error, 2 usage, 64 bad pin file or input.
//! See [`fedpin::cli::pinctl::EXIT_HELP`] for how a broken pin file is reported.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fedpin::alert::AlertHub;
use fedpin::cli::pinctl::{Cli, Cmd, ModeArg, TrustArg};
use fedpin::discovery::{self, DiscoveryOptions};
use fedpin::pinfile_edit::{self, AddOutcome, NewPeer};
use fedpin::pins::{split_server_name, Mode, Peer, Pin, PinSet, Trust};
use fedpin::probe::{self, Target};
use fedpin::verify::{Basis, VerifierCore};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const EXIT_MISMATCH: u8 = 1;
const EXIT_BAD_INPUT: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PINCTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,fedpin::alert=off")),
        )
        .compact()
        .init();
    let res = match cli.cmd {
        Cmd::Hash { file } => hash(&file),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "pinctl", &mut std::io::stdout());
            Ok(0)
        }
        Cmd::Check => check(&cli.pins),
        Cmd::List { json } => list(&cli.pins, json),
        Cmd::Remove { server_name } => remove(&cli.pins, &server_name),
        Cmd::Add {
            server_name,
            pins,
            from_cert,
            from_cert_all,
            connect,
            connect_to,
            trust,
            mode,
            expires,
            roots,
            yes,
            no_signing_keys,
            note,
        } => runtime().and_then(|rt| {
            rt.block_on(add(AddArgs {
                path: &cli.pins,
                server_name,
                pins,
                from_cert,
                from_cert_all,
                connect,
                connect_to,
                trust: trust.map(|t| match t {
                    TrustArg::Webpki => Trust::Webpki,
                    TrustArg::PinOnly => Trust::PinOnly,
                }),
                mode: mode.map(|m| match m {
                    ModeArg::Enforce => Mode::Enforce,
                    ModeArg::Report => Mode::Report,
                }),
                expires,
                roots,
                yes,
                no_signing_keys,
                note,
            }))
        }),
        Cmd::Verify {
            server_names,
            roots,
            connect,
            connect_to,
            json,
            timeout,
        } => runtime().and_then(|rt| {
            rt.block_on(verify(
                &cli.pins,
                server_names,
                roots,
                connect,
                &connect_to,
                json,
                Duration::from_secs(timeout.max(1)),
            ))
        }),
    };
    match res {
        Ok(code) => ExitCode::from(code),
        Err(Failure(code, msg)) => {
            eprintln!("pinctl: {msg}");
            ExitCode::from(code)
        }
    }
}

/// An error with its exit code.
struct Failure(u8, String);

fn bad(msg: impl Into<String>) -> Failure {
    Failure(EXIT_BAD_INPUT, msg.into())
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Failure(
                EXIT_BAD_INPUT,
                format!("cannot start the async runtime: {e}"),
            )
        })
}

/// Loads the pin file for a command that needs it: a file that does not
/// load is bad input (located errors on stderr, exit 64).
fn load(path: &Path) -> Result<PinSet, Failure> {
    PinSet::load(path).map_err(|e| bad(e.to_string()))
}

fn hash(file: &str) -> Result<u8, Failure> {
    let mut bytes = Vec::new();
    if file == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("cannot read stdin: {e}")))?;
    } else {
        bytes = std::fs::read(file).map_err(|e| bad(format!("{file}: cannot read: {e}")))?;
    }
    let items =
        fedpin::verify::pins_of_pem_or_der(&bytes).map_err(|e| bad(format!("{file}: {e}")))?;
    for item in items {
        println!("{}  {}", item.pin, item.label);
    }
    Ok(0)
}

/// Lints the pin file. Its findings are its output (stdout): errors with
/// exit 1, warnings with exit 0. Only a file it cannot read is bad input
/// (stderr, exit 64).
fn check(path: &Path) -> Result<u8, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| bad(format!("{}: cannot read the pin file: {e}", path.display())))?;
    match PinSet::parse_bytes(&bytes) {
        Ok(set) => {
            let now = OffsetDateTime::now_utc();
            let mut warnings: Vec<String> = set.warnings.iter().map(|w| w.to_string()).collect();
            for p in set.peers() {
                if p.is_expired(now) {
                    warnings.push(format!(
                        "line {}: \"{}\": pins expired; policy.on_expired applies",
                        p.line, p.server_name
                    ));
                } else if let Some(e) = p.expires {
                    let days = (e - now).whole_days();
                    if days < 30 {
                        warnings.push(format!(
                            "line {}: \"{}\": pins expire in {days} days",
                            p.line, p.server_name
                        ));
                    }
                }
            }
            for w in &warnings {
                println!("{}: warning: {w}", path.display());
            }
            println!(
                "{}: ok: {} peer(s), policy unpinned={} on_expired={}, {} warning(s)",
                path.display(),
                set.len(),
                set.policy.unpinned,
                set.policy.on_expired,
                warnings.len()
            );
            Ok(0)
        }
        Err(e) => {
            for d in &e.errors {
                println!("{}: error: {d}", path.display());
            }
            println!("{}: {} error(s)", path.display(), e.errors.len());
            Ok(EXIT_MISMATCH)
        }
    }
}

fn fmt_time(t: Option<OffsetDateTime>) -> String {
    t.and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default()
}

fn peer_json(p: &Peer) -> serde_json::Value {
    serde_json::json!({
        "server_name": p.server_name,
        "hosts": p.hosts,
        "pins": p.pins.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "trust": p.trust.to_string(),
        "mode": p.mode.to_string(),
        "expires": p.expires.and_then(|e| e.format(&Rfc3339).ok()),
        "note": p.note,
        "line": p.line,
    })
}

fn list(path: &Path, json: bool) -> Result<u8, Failure> {
    let set = load(path)?;
    if json {
        let v = serde_json::json!({
            "policy": set.policy,
            "peers": set.peers().iter().map(peer_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(0);
    }
    if set.is_empty() {
        println!("no peers in {}", path.display());
    }
    for p in set.peers() {
        println!(
            "{}  trust={} mode={}{}",
            p.server_name,
            p.trust,
            p.mode,
            match p.expires {
                Some(e) => format!(" expires={}", fmt_time(Some(e))),
                None => String::new(),
            }
        );
        println!("  hosts: {}", p.hosts.join(", "));
        for pin in &p.pins {
            println!("  {pin}");
        }
    }
    Ok(0)
}

fn remove(path: &Path, server_name: &str) -> Result<u8, Failure> {
    pinfile_edit::remove_peer(path, server_name).map_err(|e| match e {
        pinfile_edit::EditError::NotFound { .. } => Failure(EXIT_MISMATCH, e.to_string()),
        other => bad(other.to_string()),
    })?;
    println!("removed {server_name} from {}", path.display());
    Ok(0)
}

fn read_roots(
    roots: &[PathBuf],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, Failure> {
    let mut out = Vec::new();
    for r in roots {
        out.extend(fedpin::tls::load_certs(r).map_err(|e| bad(e.to_string()))?);
    }
    Ok(out)
}

fn core(roots: &[PathBuf]) -> Result<Arc<VerifierCore>, Failure> {
    let extra = read_roots(roots)?;
    VerifierCore::new(&fedpin::tls::provider(), &extra, AlertHub::new())
        .map(Arc::new)
        .map_err(|e| bad(e.to_string()))
}

fn parse_connect(s: &str) -> Result<(String, u16), Failure> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| Failure(2, format!("--connect \"{s}\" must be HOST:PORT")))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Failure(2, format!("--connect \"{s}\": invalid port \"{port}\"")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(Failure(2, format!("--connect \"{s}\": empty host")));
    }
    Ok((host.to_string(), port))
}

/// Applies the `--connect-to` rules to a target.
fn redirected(mut t: Target, rules: &[discovery::ConnectTo]) -> Target {
    if let Some(r) = rules
        .iter()
        .find(|r| r.host == t.connect_host && r.port == t.port)
    {
        t.connect_host = r.addr.ip().to_string();
        t.port = r.addr.port();
    }
    t
}

async fn resolve_target(
    server_name: &str,
    connect: Option<&str>,
    extra_roots: Vec<rustls::pki_types::TrustAnchor<'static>>,
    connect_to: &[discovery::ConnectTo],
) -> Result<(Target, String, Option<discovery::WellKnown>), Failure> {
    let tls_host = split_server_name(server_name).map_err(|m| Failure(2, m))?;
    if let Some(c) = connect {
        let (host, port) = parse_connect(c)?;
        return Ok((
            Target {
                tls_name: tls_host,
                connect_host: host,
                port,
            },
            format!("--connect {c}"),
            None,
        ));
    }
    let name: discovery::ServerName = server_name
        .parse()
        .map_err(|e: discovery::DiscoveryError| Failure(2, e.to_string()))?;
    let opts = DiscoveryOptions {
        extra_roots,
        connect_to: connect_to.to_vec(),
        ..DiscoveryOptions::default()
    };
    let r = discovery::resolve(&name, &opts)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let target = Target {
        tls_name: r.tls_name.clone(),
        connect_host: r.connect_host.clone(),
        port: r.port,
    };
    Ok((
        redirected(target, connect_to),
        r.via.to_string(),
        r.well_known,
    ))
}

/// For a peer with pinned signing keys: which keys it publishes now that
/// are not pinned (added) and which pinned ones it no longer publishes
/// (removed), or why they could not be read; `None` when they agree.
async fn signing_key_change(
    core: &Arc<VerifierCore>,
    set: &PinSet,
    target: &Target,
    p: &Peer,
) -> Option<String> {
    if p.signing_keys.is_empty() {
        return None;
    }
    let pinned: Vec<String> = p
        .signing_keys
        .iter()
        .map(|k| format!("{}={}", k.id, k.base64()))
        .collect();
    match signing_keys_of(core, set, target, &p.server_name).await {
        Err(e) => Some(format!("signing keys could not be read: {e}")),
        Ok(now) => {
            let added: Vec<&String> = now.iter().filter(|k| !pinned.contains(k)).collect();
            let removed: Vec<&String> = pinned.iter().filter(|k| !now.contains(k)).collect();
            if added.is_empty() && removed.is_empty() {
                None
            } else {
                Some(format!(
                    "signing keys changed: added [{}], removed [{}] (requests signed with an unpinned key are refused; re-run pinctl add after checking the change out of band)",
                    added.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    removed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ))
            }
        }
    }
}

/// Reads the peer's signing keys from `target` over TLS checked against
/// `pins` (the entry about to be written), as `ed25519:ID=BASE64`.
async fn signing_keys_of(
    core: &Arc<VerifierCore>,
    pins: &PinSet,
    target: &Target,
    server_name: &str,
) -> Result<Vec<String>, String> {
    let store = Arc::new(fedpin::pins::PinStore::fixed(
        pins.clone(),
        core.alerts().clone(),
    ));
    let upstream = Arc::new(fedpin::tls::UpstreamTls::new(
        core.clone(),
        store,
        fedpin::tls::provider(),
    ));
    // The operator chose this endpoint: any address may be dialled.
    let settings = fedpin::matrix::keys::KeyFetchSettings {
        egress: fedpin::proxy::egress::EgressPolicy::new(
            vec![
                "0.0.0.0/0".parse().map_err(|_| "CIDR")?,
                "::/0".parse().map_err(|_| "CIDR")?,
            ],
            vec![],
        ),
        timeout: Duration::from_secs(15),
        ..Default::default()
    };
    let fetcher = fedpin::matrix::keys::KeyFetcher::new(upstream, settings);
    let keys = fetcher
        .fetch_from(
            &target.tls_name,
            &target.connect_host,
            target.port,
            server_name,
        )
        .await?;
    let mut out: Vec<String> = keys
        .values()
        .map(|k| format!("{}={}", k.id, k.base64()))
        .collect();
    out.sort();
    Ok(out)
}

/// Connects to `target`, shows its chain, and returns the pins the operator
/// chose (`--yes`: the leaf) with the capture.
async fn pick(
    core: &VerifierCore,
    target: &Target,
    trust: Trust,
    yes: bool,
) -> Result<(probe::Captured, Vec<Pin>), Failure> {
    let captured = probe::capture(core, target, Duration::from_secs(15))
        .await
        .map_err(|e| bad(e.to_string()))?;
    println!(
        "Served chain of {} ({}):",
        target.tls_name, captured.peer_addr
    );
    for (i, e) in captured.entries.iter().enumerate() {
        println!("  [{}] {}", i + 1, e.role);
        if !e.subject.is_empty() {
            println!("      subject:   {}", e.subject);
            println!("      issuer:    {}", e.issuer);
            println!("      not after: {}", e.not_after);
        }
        println!("      pin:       {}", e.pin);
    }
    match &captured.webpki {
        Ok(()) => println!("Web PKI: valid for {}", target.tls_name),
        Err(e) => println!("Web PKI: NOT valid for {} ({e})", target.tls_name),
    }
    if trust == Trust::Webpki {
        if let Err(e) = &captured.webpki {
            return Err(bad(format!(
                "{} does not validate under Web PKI ({e}); pin it with --trust pin-only (self-signed peers) or pass its CA with --roots"
            , target.tls_name)));
        }
    }
    let chosen: Vec<usize> = if yes {
        vec![0]
    } else {
        choose(captured.entries.len())?
    };
    let mut pins = Vec::new();
    for i in chosen {
        let e = &captured.entries[i];
        if trust == Trust::PinOnly && i != 0 {
            return Err(Failure(
                2,
                "trust = pin-only checks only the leaf key: choose [1]".into(),
            ));
        }
        if e.role.starts_with("sent, not on") {
            return Err(Failure(
                2,
                format!(
                    "[{}] is not on the validated path and would never match",
                    i + 1
                ),
            ));
        }
        pins.push(e.pin);
    }
    Ok((captured, pins))
}

fn anchors_of(
    roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Vec<rustls::pki_types::TrustAnchor<'static>> {
    roots
        .iter()
        .filter_map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .ok()
                .map(|a| a.to_owned())
        })
        .collect()
}

fn parse_expires(s: &str) -> Result<String, Failure> {
    if OffsetDateTime::parse(s, &Rfc3339).is_ok() {
        return Ok(s.to_string());
    }
    let full = format!("{s}T00:00:00Z");
    if OffsetDateTime::parse(&full, &Rfc3339).is_ok() {
        return Ok(full);
    }
    Err(Failure(
        2,
        format!("--expires \"{s}\" is not a date (use YYYY-MM-DD or RFC 3339)"),
    ))
}

struct AddArgs<'a> {
    path: &'a Path,
    server_name: String,
    pins: Vec<String>,
    from_cert: Vec<PathBuf>,
    from_cert_all: bool,
    connect: Option<String>,
    connect_to: Vec<String>,
    trust: Option<Trust>,
    mode: Option<Mode>,
    expires: Option<String>,
    roots: Vec<PathBuf>,
    yes: bool,
    no_signing_keys: bool,
    note: Option<String>,
}

async fn add(a: AddArgs<'_>) -> Result<u8, Failure> {
    let default_host = split_server_name(&a.server_name).map_err(|m| Failure(2, m))?;
    let expires = a.expires.as_deref().map(parse_expires).transpose()?;
    let mut pins: Vec<Pin> = Vec::new();
    for p in &a.pins {
        pins.push(
            p.parse()
                .map_err(|e| Failure(2, format!("--pin \"{p}\": {e}")))?,
        );
    }
    for f in &a.from_cert {
        let bytes =
            std::fs::read(f).map_err(|e| bad(format!("{}: cannot read: {e}", f.display())))?;
        let items = fedpin::verify::pins_of_pem_or_der(&bytes)
            .map_err(|e| bad(format!("{}: {e}", f.display())))?;
        // The first certificate is the leaf (as --yes pins for a live chain);
        // the rest of a full chain only on the explicit --from-cert-all.
        println!("{}:", f.display());
        for (i, item) in items.iter().enumerate() {
            let take = i == 0 || a.from_cert_all;
            let mark = if take { "pinned" } else { "not pinned" };
            println!("  [{}] {}  {mark:<10}  {}", i + 1, item.pin, item.label);
            if take {
                pins.push(item.pin);
            }
        }
        if items.len() > 1 && !a.from_cert_all {
            println!(
                "  only the first certificate (the leaf) is pinned; --from-cert-all pins the others too"
            );
        }
    }
    let connect_to: Vec<discovery::ConnectTo> = a
        .connect_to
        .iter()
        .map(|c| {
            c.parse()
                .map_err(|e: String| Failure(2, format!("--connect-to {e}")))
        })
        .collect::<Result<_, _>>()?;
    let mut hosts = None;
    let mut delegation = None;
    let mut host_pins: Vec<(String, Vec<Pin>)> = Vec::new();
    let mut signing_keys: Vec<String> = Vec::new();
    let today = OffsetDateTime::now_utc().date();
    let mut note = a.note.clone();
    if pins.is_empty() {
        let extra = read_roots(&a.roots)?;
        let core = core(&a.roots)?;
        let trust = a.trust.unwrap_or(Trust::Webpki);
        let (target, via, well_known) = resolve_target(
            &a.server_name,
            a.connect.as_deref(),
            anchors_of(&extra),
            &connect_to,
        )
        .await?;
        eprintln!(
            "{}: connecting to {}:{} (TLS name {}, via {via})",
            a.server_name, target.connect_host, target.port, target.tls_name
        );
        let (captured, chosen) = pick(&core, &target, trust, a.yes).await?;
        pins.extend(chosen);
        let mut checks = vec![(target.tls_name.clone(), captured.chain.clone())];
        if target.tls_name != default_host {
            hosts = Some(vec![target.tls_name.clone()]);
        }
        // Delegation: every host that answered the well-known fetch is a TLS
        // name this peer's federation depends on; each is pinned with keys
        // enrolled for it (SPEC 3, "Delegation is part of the peer").
        if let Some(wk) = &well_known {
            let delegated = wk.delegated.to_string();
            delegation = Some(delegated.clone());
            let mut seen: Vec<(String, u16)> = Vec::new();
            for hop in &wk.hops {
                if seen.contains(&(hop.host.clone(), hop.port)) {
                    continue;
                }
                seen.push((hop.host.clone(), hop.port));
                println!(
                    "\n{} answers /.well-known/matrix/server for {} (HTTP {}; delegation to {delegated}); pin it too:",
                    hop.host, a.server_name, hop.status
                );
                let front = redirected(
                    Target {
                        tls_name: hop.host.clone(),
                        connect_host: hop.host.clone(),
                        port: hop.port,
                    },
                    &connect_to,
                );
                let (fc, chosen) = pick(&core, &front, trust, a.yes).await?;
                checks.push((hop.host.clone(), fc.chain.clone()));
                if hop.host == target.tls_name {
                    // The same name on another port (e.g. a web server on
                    // 443 in front of the homeserver on 8448): both keys
                    // are valid for it.
                    for p in chosen {
                        if !pins.contains(&p) {
                            pins.push(p);
                        }
                    }
                } else if let Some((_, list)) = host_pins.iter_mut().find(|(h, _)| *h == hop.host) {
                    for p in chosen {
                        if !list.contains(&p) {
                            list.push(p);
                        }
                    }
                } else {
                    host_pins.push((hop.host.clone(), chosen));
                }
            }
        }
        // Self-check with the proxy's own verifier before anything is written:
        // every name enrolled must pass under the entry about to be written.
        let candidate = candidate_set(
            &a.server_name,
            hosts.as_ref(),
            &pins,
            &host_pins,
            delegation.as_deref(),
            trust,
            a.mode,
            expires.as_deref(),
        )?;
        for (name, chain) in &checks {
            let Some(ee) = chain.first() else { continue };
            let ev = core.evaluate(
                &candidate,
                name,
                rustls::pki_types::ServerName::try_from(name.clone())
                    .ok()
                    .as_ref(),
                ee,
                &chain[1..],
                rustls::pki_types::UnixTime::now(),
                fedpin::verify::Usage::Server,
                &Default::default(),
            );
            if let fedpin::verify::Verdict::Reject(r) = ev.verdict {
                return Err(bad(format!(
                    "refusing to write a pin the verifier would reject for {name}: {}",
                    r.reason
                )));
            }
        }
        // The peer's Matrix signing keys, read over TLS checked by the
        // entry just chosen (SPEC 3, "Signing keys").
        let read = if a.no_signing_keys {
            Err("--no-signing-keys".to_owned())
        } else {
            signing_keys_of(&core, &candidate, &target, &a.server_name).await
        };
        match read {
            Ok(keys) => {
                println!("\nSigning keys of {} (from /_matrix/key/v2/server over the pinned connection):", a.server_name);
                for k in &keys {
                    println!("  {k}");
                }
                signing_keys = keys;
            }
            Err(e) => println!(
                "\nwarning: signing keys of {} not recorded ({e}); requests from it are checked against fetched keys",
                a.server_name
            ),
        }
        if note.is_none() {
            note = Some(format!(
                "enrolled {today} by pinctl from {} ({via})",
                captured.peer_addr
            ));
        }
    } else if note.is_none() {
        note = Some(format!("enrolled {today} by pinctl"));
    }
    let peer = NewPeer {
        server_name: a.server_name.clone(),
        hosts,
        pins: pins.clone(),
        delegation,
        host_pins: host_pins.clone(),
        signing_keys,
        trust: a.trust,
        mode: a.mode,
        expires,
        note,
    };
    let outcome = pinfile_edit::add_peer(a.path, &peer).map_err(|e| bad(e.to_string()))?;
    match outcome {
        AddOutcome::Added => {
            println!(
                "added {} with {} pin(s) to {}",
                a.server_name,
                pins.len(),
                a.path.display()
            );
            for (h, list) in &host_pins {
                println!("  and {} pin(s) for its well-known front {h}", list.len());
            }
        }
        AddOutcome::Extended(n) => {
            println!("{} already listed: added {n} new pin(s)", a.server_name)
        }
    }
    if let Ok(set) = PinSet::load(a.path) {
        if let Some(p) = set.by_server_name(&a.server_name) {
            if p.pins.len() == 1 {
                println!("warning: {} has a single pin and no backup: add the next key (or pin the CA) before it rotates", a.server_name);
            }
        }
    }
    Ok(0)
}

#[allow(clippy::too_many_arguments)]
fn candidate_set(
    server_name: &str,
    hosts: Option<&Vec<String>>,
    pins: &[Pin],
    host_pins: &[(String, Vec<Pin>)],
    delegation: Option<&str>,
    trust: Trust,
    mode: Option<Mode>,
    expires: Option<&str>,
) -> Result<PinSet, Failure> {
    let mut t = format!(
        "version = 1\n[[peer]]\nserver_name = {}\n",
        toml_str(server_name)
    );
    if let Some(h) = hosts {
        let list: Vec<String> = h.iter().map(|s| toml_str(s)).collect();
        t.push_str(&format!("hosts = [{}]\n", list.join(", ")));
    }
    let list: Vec<String> = pins.iter().map(|p| format!("\"{p}\"")).collect();
    t.push_str(&format!(
        "pins = [{}]\ntrust = \"{trust}\"\nmode = \"{}\"\n",
        list.join(", "),
        mode.unwrap_or(Mode::Enforce)
    ));
    if let Some(e) = expires {
        t.push_str(&format!("expires = \"{e}\"\n"));
    }
    if let Some(d) = delegation {
        t.push_str(&format!("delegation = {}\n", toml_str(d)));
    }
    if !host_pins.is_empty() {
        t.push_str("[peer.host_pins]\n");
        for (h, list) in host_pins {
            let l: Vec<String> = list.iter().map(|p| format!("\"{p}\"")).collect();
            t.push_str(&format!("{} = [{}]\n", toml_str(h), l.join(", ")));
        }
    }
    PinSet::parse(&t).map_err(|e| bad(e.to_string()))
}

fn toml_str(s: &str) -> String {
    toml_edit::Value::from(s).to_string().trim().to_string()
}

fn choose(n: usize) -> Result<Vec<usize>, Failure> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        eprintln!("(reading the choice from standard input)");
    }
    print!("Pin which certificate(s)? Numbers separated by commas [1 = leaf]: ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let read = stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| bad(format!("cannot read the choice: {e}")))?;
    if read == 0 {
        return Err(Failure(
            2,
            "no choice given (standard input closed); use --yes to pin the leaf".into(),
        ));
    }
    let line = line.trim();
    if line.is_empty() {
        return Ok(vec![0]);
    }
    let mut out = Vec::new();
    for part in line.split(',') {
        let k: usize = part
            .trim()
            .parse()
            .ok()
            .filter(|k| (1..=n).contains(k))
            .ok_or_else(|| {
                Failure(
                    2,
                    format!("\"{}\" is not a number from 1 to {n}", part.trim()),
                )
            })?;
        if !out.contains(&(k - 1)) {
            out.push(k - 1);
        }
    }
    Ok(out)
}

/// One peer's `pinctl verify` result.
struct Outcome {
    status: &'static str,
    detail: String,
    days_cert: Option<i64>,
    target_text: String,
}

#[allow(clippy::too_many_arguments)]
fn results_push_early(
    failed: &mut usize,
    json: bool,
    results: &mut Vec<serde_json::Value>,
    p: &Peer,
    status: &'static str,
    detail: String,
    target_text: String,
    now: OffsetDateTime,
) {
    report_line(
        failed,
        json,
        results,
        p,
        Outcome {
            status,
            detail,
            days_cert: None,
            target_text,
        },
        now,
    );
}

fn report_line(
    failed: &mut usize,
    json: bool,
    results: &mut Vec<serde_json::Value>,
    p: &Peer,
    o: Outcome,
    now: OffsetDateTime,
) {
    if o.status != "ok" {
        *failed += 1;
    }
    let pins_days = p.expires.map(|e| (e - now).whole_days());
    if json {
        results.push(serde_json::json!({
            "server_name": p.server_name,
            "target": o.target_text,
            "status": o.status,
            "detail": o.detail,
            "cert_days_left": o.days_cert,
            "pins_days_left": pins_days,
            "delegation": p.delegation,
        }));
    } else {
        let mut line = format!("{:<8} {}", o.status.to_uppercase(), p.server_name);
        if !o.target_text.is_empty() {
            line.push_str(&format!(" ({})", o.target_text));
        }
        if let Some(d) = o.days_cert {
            line.push_str(&format!(", certificate expires in {d} days"));
        }
        if let Some(d) = pins_days {
            line.push_str(&format!(", pins expire in {d} days"));
        }
        println!("{line}");
        if o.status != "ok" {
            println!("         {}", o.detail);
        }
    }
}

async fn verify(
    path: &Path,
    names: Vec<String>,
    roots: Vec<PathBuf>,
    connect: Option<String>,
    connect_to: &[String],
    json: bool,
    timeout: Duration,
) -> Result<u8, Failure> {
    let connect_to: Vec<discovery::ConnectTo> = connect_to
        .iter()
        .map(|c| {
            c.parse()
                .map_err(|e: String| Failure(2, format!("--connect-to {e}")))
        })
        .collect::<Result<_, _>>()?;
    let set = Arc::new(load(path)?);
    if connect.is_some() && names.len() != 1 {
        return Err(Failure(2, "--connect needs exactly one SERVER_NAME".into()));
    }
    let peers: Vec<Peer> = if names.is_empty() {
        set.peers().to_vec()
    } else {
        let mut v = Vec::new();
        for n in &names {
            v.push(set.by_server_name(n).cloned().ok_or_else(|| {
                Failure(EXIT_MISMATCH, format!("{n} is not in {}", path.display()))
            })?);
        }
        v
    };
    let extra = read_roots(&roots)?;
    let core = core(&roots)?;
    let now = OffsetDateTime::now_utc();
    let mut failed = 0;
    let mut results = Vec::new();
    for p in &peers {
        let (status, detail, days_cert, target_text) = match resolve_target(
            &p.server_name,
            connect.as_deref(),
            anchors_of(&extra),
            &connect_to,
        )
        .await
        {
            Err(Failure(_, m)) => ("error", m, None, String::new()),
            Ok((target, _via, well_known)) => {
                let found = well_known.as_ref().map(|w| w.delegated.to_string());
                let front_failure = match (&well_known, connect.is_none()) {
                    (Some(wk), true) => {
                        let mut failure = None;
                        for hop in &wk.hops {
                            let front = redirected(
                                Target {
                                    tls_name: hop.host.clone(),
                                    connect_host: hop.host.clone(),
                                    port: hop.port,
                                },
                                &connect_to,
                            );
                            let c = probe::check(
                                core.clone(),
                                set.clone(),
                                &front,
                                Some(p.server_name.clone()),
                                timeout,
                            )
                            .await;
                            let passed = matches!(&c, Ok(c) if c.passed() && c.record.as_ref().and_then(|r| r.basis) != Some(Basis::ReportModeWebPki));
                            if !passed {
                                failure = Some(format!(
                                    "the well-known front {} does not match its pins",
                                    hop.host
                                ));
                                break;
                            }
                        }
                        failure
                    }
                    _ => None,
                };
                let tt = format!(
                    "{}:{} as {}",
                    target.connect_host, target.port, target.tls_name
                );
                if connect.is_none() && p.delegation.is_some() && found != p.delegation {
                    let detail = format!(
                        "delegation changed: recorded {}, discovery now finds {}",
                        p.delegation.as_deref().unwrap_or("none"),
                        found.as_deref().unwrap_or("no delegation")
                    );
                    results_push_early(
                        &mut failed,
                        json,
                        &mut results,
                        p,
                        "delegation_changed",
                        detail,
                        tt,
                        now,
                    );
                    continue;
                }
                if let Some(detail) = front_failure {
                    results_push_early(
                        &mut failed,
                        json,
                        &mut results,
                        p,
                        "mismatch",
                        detail,
                        tt,
                        now,
                    );
                    continue;
                }
                let tt = format!(
                    "{}:{} as {}",
                    target.connect_host, target.port, target.tls_name
                );
                match probe::check(
                    core.clone(),
                    set.clone(),
                    &target,
                    Some(p.server_name.clone()),
                    timeout,
                )
                .await
                {
                    Err(e) => ("error", e.to_string(), None, tt),
                    Ok(c) if c.passed() => {
                        let basis = c.record.as_ref().and_then(|r| r.basis);
                        let days = c.leaf_not_after.map(|t| (t - now).whole_days());
                        if basis == Some(Basis::ReportModeWebPki) {
                            // Accepted only because the peer is in report mode:
                            // the served keys do not match the pins.
                            (
                                    "mismatch",
                                    "no pin matches the served chain (mode = \"report\": fedpin lets this peer through only because Web PKI validates it)".to_string(),
                                    days,
                                    tt,
                                )
                        } else if let Some(change) =
                            signing_key_change(&core, &set, &target, p).await
                        {
                            ("signing_keys_changed", change, days, tt)
                        } else {
                            (
                                "ok",
                                basis.map(|b| format!("{b:?}")).unwrap_or_default(),
                                days,
                                tt,
                            )
                        }
                    }
                    Ok(c) => {
                        let why = c
                            .record
                            .as_ref()
                            .and_then(|r| r.rejected.as_ref().map(|x| x.reason.clone()))
                            .or(c.error.clone())
                            .unwrap_or_else(|| "handshake failed".into());
                        let status = if c.record.as_ref().is_some_and(|r| r.alert.is_some()) {
                            "mismatch"
                        } else {
                            "error"
                        };
                        (status, why, None, tt)
                    }
                }
            }
        };
        report_line(
            &mut failed,
            json,
            &mut results,
            p,
            Outcome {
                status,
                detail,
                days_cert,
                target_text,
            },
            now,
        );
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::Value::Array(results)).unwrap_or_default()
        );
    }
    Ok(if failed > 0 { EXIT_MISMATCH } else { 0 })
}
