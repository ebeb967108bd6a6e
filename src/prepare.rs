//! One prepared config: everything `fedpin run` needs, read and checked
//! before any socket is bound.
//!
//! [`Config`] validates the text of `fedpin.toml`. [`Prepared`] goes on to
//! read every file it names and to build the typed material the listeners
//! take: the pin set, the interception CA (key mode, certificate, key
//! belongs to it), the inbound certificate pair (readable, PEM, key matches),
//! trust anchors (`outbound.extra_roots`, `inbound.client_roots`,
//! `alerts.extra_roots`), the outbound client certificate, the upstream URL
//! and the alert sinks (webhook, Matrix room and its token file).
//!
//! `fedpin check-config` is [`Prepared::load`] and nothing else; `fedpin
//! run` hands the same [`Prepared`] to [`crate::daemon::Daemon::start_prepared`];
//! a config reload goes through it too. So a config that `check-config`
//! accepts is one `run` starts with (binding the listen addresses is the
//! one thing left to `run`), and every problem is reported at once, each
//! naming the key, its line in the config, and the file at fault.

use std::collections::BTreeMap;
use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::alert::AlertHub;
use crate::config::{Config, ConfigError};
use crate::pins::{Diagnostic, PinSet};
use crate::sinks::{CommandSink, HttpTarget, MatrixSink, WebhookSink};
use crate::tls::certs::{CertStore, PairError, PairFile};
use crate::tls::mint::{CaFile, LeafMinter};

/// Leaves cached by the interception CA's minter.
const LEAF_CACHE: usize = 4096;

/// The `[outbound]` material.
pub struct OutboundMaterial {
    /// The interception CA, loaded and checked.
    pub minter: LeafMinter,
    /// `extra_roots`: usable trust anchors (empty when not set).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// `client_cert` and `client_key`: the chain and its key, checked to
    /// belong together and to make a client config.
    pub client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

/// The `[inbound]` material.
pub struct InboundMaterial {
    /// The server certificate pair (`cert`, `key`), checked to match.
    pub certs: CertStore,
    /// `client_roots`: usable trust anchors (empty when not set).
    pub client_roots: Vec<CertificateDer<'static>>,
    /// `upstream`, parsed.
    pub upstream: hyper::Uri,
}

/// The `[alerts]` sinks, built (not yet attached: that needs the runtime).
#[derive(Default)]
pub struct AlertMaterial {
    /// The `alerts.command` sink, ready to attach.
    pub command: Option<CommandSink>,
    /// The `alerts.webhook` sink, ready to attach.
    pub webhook: Option<WebhookSink>,
    /// `matrix_homeserver`, `matrix_room`, `matrix_token_file`.
    pub matrix: Option<MatrixSink>,
}

/// A config whose every file was read and checked; what the daemon starts from.
pub struct Prepared {
    /// The validated config.
    pub config: Config,
    /// The pin file as loaded now. (The daemon's pin store opens the file
    /// itself when it starts, and refuses to start if it broke in between.)
    pub pins: PinSet,
    /// `[outbound]` material, when configured.
    pub outbound: Option<OutboundMaterial>,
    /// `[inbound]` material, when configured.
    pub inbound: Option<InboundMaterial>,
    /// The alert sinks.
    pub alerts: AlertMaterial,
    /// A digest of the material behind each file key that only a restart
    /// applies, to tell on reload which ones changed.
    digests: BTreeMap<&'static str, [u8; 32]>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Reads and checks every file this config names and builds the
    /// material a run needs; every problem found, each naming its key.
    pub fn prepare(&self) -> Result<Prepared, ConfigError> {
        let mut errors = Vec::new();
        let prepared = gather(self, &mut errors);
        finish(self, prepared, errors)
    }
}

impl Prepared {
    /// Reads the config file, validates it, and prepares it ([`Config::prepare`]).
    /// Problems in the text and in the files it names are reported together.
    pub fn load(path: &Path) -> Result<Prepared, ConfigError> {
        let (config, mut errors) = Config::load_partial(path)?;
        let prepared = gather(&config, &mut errors);
        finish(&config, prepared, errors)
    }

    /// Warnings that do not stop a run (from the pin file), one per line.
    pub fn warnings(&self) -> Vec<String> {
        self.pins
            .warnings
            .iter()
            .map(|w| format!("{}: warning: {w}", self.config.pins.display()))
            .collect()
    }

    /// What will run, as `fedpin check-config` prints it.
    pub fn summary(&self) -> String {
        let c = &self.config;
        let mut out = vec![
            format!("{}: ok", c.display_name()),
            format!(
                "  pins: {} ({} peers, unpinned={}, on_expired={})",
                c.pins.display(),
                self.pins.len(),
                self.pins.policy.unpinned,
                self.pins.policy.on_expired
            ),
        ];
        if let Some(o) = &c.outbound {
            out.push(format!(
                "  outbound: listen {} (CA {})",
                o.listen,
                o.ca_cert.display()
            ));
        }
        if let Some(i) = &c.inbound {
            out.push(format!(
                "  inbound: listen {} -> {} (client_auth {:?})",
                i.listen, i.upstream, i.client_auth
            ));
        }
        if let Some(a) = &c.admin {
            out.push(format!("  admin: listen {a}"));
        }
        if let Some(cmd) = &c.alert_command {
            out.push(format!("  alerts: command {cmd}"));
        }
        if let Some(w) = &c.alert_webhook {
            out.push(format!("  alerts: webhook {w}"));
        }
        if let Some((hs, room, _)) = &c.alert_matrix {
            out.push(format!("  alerts: matrix room {room} on {hs}"));
        }
        out.join("\n")
    }

    /// What a running daemon keeps of this config to judge later reloads.
    pub fn baseline(&self) -> Baseline {
        Baseline {
            config: self.config.clone(),
            digests: self.digests.clone(),
        }
    }
}

/// The config a daemon started with: the keys a reload cannot apply are
/// compared against it.
#[derive(Debug, Clone)]
pub struct Baseline {
    config: Config,
    digests: BTreeMap<&'static str, [u8; 32]>,
}

impl Baseline {
    /// The keys whose new value (or file contents) differ from the running
    /// ones but apply only at the next start: listen addresses, CA and
    /// other file paths, trust anchors, outbound settings, sinks. The
    /// inbound edge rules (`deny_origins`, `allow_origins`, rates) and the
    /// outbound egress rules, destinations, ports, credentials and timeouts
    /// apply live, and the server certificate files are re-read on change,
    /// so they are never listed. Values are not included (`proxy_auth`).
    pub fn restart_needed(&self, new: &Prepared) -> Vec<String> {
        let (a, b) = (&self.config, &new.config);
        let mut keys = RestartKeys::default();
        keys.diff("pins", a.pins != b.pins);
        keys.outbound(a, b);
        keys.inbound(a, b);
        keys.diff("admin.listen", a.admin != b.admin);
        keys.alerts(a, b);
        let mut keys = keys.0;
        // Same path, new contents.
        for (key, digest) in &new.digests {
            if self.digests.get(key).is_some_and(|d| d != digest) && !keys.iter().any(|k| k == key)
            {
                keys.push(format!("{key} (file contents)"));
            }
        }
        keys
    }
}

/// The keys [`Baseline::restart_needed`] names, in the order it checks
/// them: one method per section, comparing the running config `a` with
/// the new one `b`.
#[derive(Default)]
struct RestartKeys(Vec<String>);

impl RestartKeys {
    /// Names `key` when its value `changed`.
    fn diff(&mut self, key: &str, changed: bool) {
        if changed {
            self.0.push(key.to_string());
        }
    }

    /// `[outbound]`: its listener, CA and trust anchors, tunnel cap and
    /// client certificate; the egress rules only when the edge verifies
    /// signatures (its key fetcher keeps the rules it started with). A
    /// section added or removed is named as a whole.
    fn outbound(&mut self, a: &Config, b: &Config) {
        match (&a.outbound, &b.outbound) {
            (Some(x), Some(y)) => {
                self.diff("outbound.listen", x.listen != y.listen);
                self.diff("outbound.ca_cert", x.ca_cert != y.ca_cert);
                self.diff("outbound.ca_key", x.ca_key != y.ca_key);
                self.diff("outbound.extra_roots", x.extra_roots != y.extra_roots);
                // The egress rules, destinations, ports, credentials and
                // timeouts apply live to the proxy (`Daemon::apply`); the
                // edge's signing-key fetcher keeps the egress rules it
                // started with.
                let egress_changed = x.resolve != y.resolve
                    || x.connect_to != y.connect_to
                    || x.allow_ips != y.allow_ips
                    || x.deny_ips != y.deny_ips;
                let verifying = b
                    .inbound
                    .as_ref()
                    .is_some_and(|i| i.verify_signatures != crate::config::SignatureMode::Off);
                self.diff(
                    "outbound egress keys (resolve, connect_to, allow_ips, deny_ips) for the edge's signing-key fetches",
                    egress_changed && verifying,
                );
                self.diff("outbound.max_tunnels", x.max_tunnels != y.max_tunnels);
                self.diff("outbound.client_cert", x.client_cert != y.client_cert);
                self.diff("outbound.client_key", x.client_key != y.client_key);
            }
            (x, y) => self.diff("[outbound]", x.is_some() != y.is_some()),
        }
    }

    /// `[inbound]`: everything but the edge rules (origin lists, rates),
    /// which apply live. A section added or removed is named as a whole.
    fn inbound(&mut self, a: &Config, b: &Config) {
        match (&a.inbound, &b.inbound) {
            (Some(x), Some(y)) => {
                self.diff("inbound.listen", x.listen != y.listen);
                self.diff("inbound.cert", x.cert != y.cert);
                self.diff("inbound.key", x.key != y.key);
                self.diff("inbound.upstream", x.upstream != y.upstream);
                self.diff("inbound.client_auth", x.client_auth != y.client_auth);
                self.diff("inbound.max_body", x.max_body != y.max_body);
                self.diff(
                    "inbound.max_header_bytes",
                    x.max_header_bytes != y.max_header_bytes,
                );
                self.diff(
                    "inbound.header_timeout_secs",
                    x.header_timeout != y.header_timeout,
                );
                self.diff(
                    "inbound.request_timeout_secs",
                    x.request_timeout != y.request_timeout,
                );
                self.diff(
                    "inbound.idle_timeout_secs",
                    x.idle_timeout != y.idle_timeout,
                );
                self.diff(
                    "inbound.max_connections",
                    x.max_connections != y.max_connections,
                );
                self.diff("inbound.client_roots", x.client_roots != y.client_roots);
                self.diff("inbound.server_name", x.server_name != y.server_name);
                self.diff(
                    "inbound.verify_signatures",
                    x.verify_signatures != y.verify_signatures,
                );
                self.diff("inbound.key_servers", x.key_servers != y.key_servers);
            }
            (x, y) => self.diff("[inbound]", x.is_some() != y.is_some()),
        }
    }

    /// `[alerts]`: every sink and its settings.
    fn alerts(&mut self, a: &Config, b: &Config) {
        self.diff("alerts.command", a.alert_command != b.alert_command);
        self.diff("alerts.webhook", a.alert_webhook != b.alert_webhook);
        self.diff(
            "alerts.extra_roots",
            a.alert_extra_roots != b.alert_extra_roots,
        );
        self.diff(
            "alerts.matrix_homeserver",
            a.alert_matrix.as_ref().map(|m| &m.0) != b.alert_matrix.as_ref().map(|m| &m.0),
        );
        self.diff(
            "alerts.matrix_room",
            a.alert_matrix.as_ref().map(|m| &m.1) != b.alert_matrix.as_ref().map(|m| &m.1),
        );
        self.diff(
            "alerts.matrix_token_file",
            a.alert_matrix.as_ref().map(|m| &m.2) != b.alert_matrix.as_ref().map(|m| &m.2),
        );
    }
}

fn finish(
    config: &Config,
    prepared: Option<Prepared>,
    mut errors: Vec<Diagnostic>,
) -> Result<Prepared, ConfigError> {
    match prepared {
        Some(p) if errors.is_empty() => Ok(p),
        _ => {
            // Config order; problems without a line (defaults) last.
            errors.sort_by_key(|d| (d.line == 0, d.line, d.column));
            Err(ConfigError {
                path: config.display_name(),
                errors,
            })
        }
    }
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn der_digest(certs: &[CertificateDer<'_>]) -> [u8; 32] {
    digest(&certs.iter().map(|c| c.as_ref()).collect::<Vec<_>>())
}

/// Collects problems against the config's keys.
struct Check<'a> {
    config: &'a Config,
    errors: &'a mut Vec<Diagnostic>,
}

impl Check<'_> {
    fn fail(&mut self, key: &str, message: String) {
        self.errors.push(self.config.diagnostic(key, message));
    }

    /// A certificate pair that failed: the problem under the key of its
    /// file; when the certificate failed, the key file is checked on its
    /// own too, so both problems show at once.
    fn pair_failed(&mut self, e: PairError, key: &Path, cert_key: &str, key_key: &str) {
        match e.file {
            PairFile::Cert => {
                self.fail(cert_key, e.message);
                if let Err(k) = crate::tls::load_key(key) {
                    self.fail(key_key, k.to_string());
                }
            }
            PairFile::Key => self.fail(key_key, e.message),
        }
    }

    /// Certificates that must be usable as trust anchors (the check the
    /// verifier makes when it is built).
    fn anchors(&mut self, key: &str, path: &Path) -> Option<Vec<CertificateDer<'static>>> {
        let certs = match crate::tls::load_certs(path) {
            Ok(c) => c,
            Err(e) => {
                self.fail(key, e.to_string());
                return None;
            }
        };
        let provider = crate::tls::provider();
        match crate::verify::VerifierCore::new(&provider, &certs, AlertHub::new()) {
            Ok(_) => Some(certs),
            Err(e) => {
                self.fail(key, format!("{}: {e}", path.display()));
                None
            }
        }
    }
}

/// Everything `prepare` checks; `None` when anything failed (the problems
/// are in `errors`).
fn gather(config: &Config, errors: &mut Vec<Diagnostic>) -> Option<Prepared> {
    let mut cx = Check { config, errors };
    let mut digests = BTreeMap::new();
    let pins = load_pins(&mut cx);
    // `Some(None)`: the section is configured but its material failed.
    let outbound = config
        .outbound
        .as_ref()
        .map(|o| outbound_material(&mut cx, o, &mut digests));
    let inbound = config
        .inbound
        .as_ref()
        .map(|i| inbound_material(&mut cx, i, &mut digests));
    let alerts = alert_sinks(&mut cx, &mut digests);

    let outbound_ok = !matches!(outbound, Some(None));
    let inbound_ok = !matches!(inbound, Some(None));
    let ok = cx.errors.is_empty() && outbound_ok && inbound_ok;
    match (ok, pins, alerts) {
        (true, Some(pins), Some(alerts)) => Some(Prepared {
            config: config.clone(),
            pins,
            outbound: outbound.flatten(),
            inbound: inbound.flatten(),
            alerts,
            digests,
        }),
        _ => None,
    }
}

/// The pin file (`pins`), loaded; each of its problems is reported under
/// the `pins` key, naming the pin file.
fn load_pins(cx: &mut Check<'_>) -> Option<PinSet> {
    let config = cx.config;
    match PinSet::load(&config.pins) {
        Ok(p) => Some(p),
        Err(e) => {
            let file = e
                .path
                .clone()
                .unwrap_or_else(|| config.pins.display().to_string());
            if e.errors.is_empty() {
                cx.fail("pins", format!("pin file {file}: {e}"));
            }
            for d in &e.errors {
                cx.fail("pins", format!("pin file {file}: {d}"));
            }
            None
        }
    }
}

/// The `[outbound]` material: the interception CA, `extra_roots` as usable
/// trust anchors, and the client certificate pair when configured. `None`
/// when any of them failed (every failure is reported).
fn outbound_material(
    cx: &mut Check<'_>,
    o: &crate::config::Outbound,
    digests: &mut BTreeMap<&'static str, [u8; 32]>,
) -> Option<OutboundMaterial> {
    let minter = interception_ca(cx, o, digests);
    let extra_roots = match &o.extra_roots {
        None => Some(Vec::new()),
        Some(p) => cx.anchors("outbound.extra_roots", p),
    };
    if let Some(r) = &extra_roots {
        digests.insert("outbound.extra_roots", der_digest(r));
    }
    let client_auth = match (&o.client_cert, &o.client_key) {
        (Some(c), Some(k)) => client_pair(cx, c, k).map(|(chain, key)| {
            digests.insert(
                "outbound.client_cert",
                digest(&[&der_digest(&chain), key.secret_der()]),
            );
            Some((chain, key))
        }),
        _ => Some(None),
    };
    match (minter, extra_roots, client_auth) {
        (Some(minter), Some(extra_roots), Some(client_auth)) => Some(OutboundMaterial {
            minter,
            extra_roots,
            client_auth,
        }),
        _ => None,
    }
}

/// `outbound.ca_cert` and `ca_key`: the interception CA loaded as a leaf
/// minter (the key has a safe mode and belongs to the certificate). When
/// the certificate cannot be read, the key's mode is still checked, so
/// that both problems show at once.
fn interception_ca(
    cx: &mut Check<'_>,
    o: &crate::config::Outbound,
    digests: &mut BTreeMap<&'static str, [u8; 32]>,
) -> Option<LeafMinter> {
    match crate::tls::load_certs(&o.ca_cert) {
        Err(e) => {
            cx.fail("outbound.ca_cert", e.to_string());
            // The key's mode is still worth knowing now.
            if let Err(m) = crate::tls::ca::check_key_mode(&o.ca_key) {
                cx.fail("outbound.ca_key", m);
            }
            None
        }
        Ok(_) => match LeafMinter::load(&o.ca_cert, &o.ca_key, LEAF_CACHE) {
            Ok(m) => {
                digests.insert("outbound.ca_cert", der_digest(&[m.ca_cert().clone()]));
                Some(m)
            }
            Err(e) => {
                let key = match e.file {
                    CaFile::Cert => "outbound.ca_cert",
                    CaFile::Key => "outbound.ca_key",
                };
                cx.fail(key, e.message);
                None
            }
        },
    }
}

/// The `[inbound]` material: the server certificate pair (`cert`, `key`,
/// checked to match), `client_roots` as usable trust anchors, and the
/// parsed `upstream` URL. `None` when any of them failed.
fn inbound_material(
    cx: &mut Check<'_>,
    i: &crate::config::Inbound,
    digests: &mut BTreeMap<&'static str, [u8; 32]>,
) -> Option<InboundMaterial> {
    let certs = match crate::tls::certs::load_pair(&i.cert, &i.key) {
        Ok(pair) => Some(CertStore::from_pair(&i.cert, &i.key, pair)),
        Err(e) => {
            cx.pair_failed(e, &i.key, "inbound.cert", "inbound.key");
            None
        }
    };
    let client_roots = match &i.client_roots {
        None => Some(Vec::new()),
        Some(p) => cx.anchors("inbound.client_roots", p),
    };
    if let Some(r) = &client_roots {
        digests.insert("inbound.client_roots", der_digest(r));
    }
    let upstream = match i.upstream.parse::<hyper::Uri>() {
        Ok(u) => Some(u),
        Err(e) => {
            cx.fail("inbound.upstream", format!("\"{}\": {e}", i.upstream));
            None
        }
    };
    match (certs, client_roots, upstream) {
        (Some(certs), Some(client_roots), Some(upstream)) => Some(InboundMaterial {
            certs,
            client_roots,
            upstream,
        }),
        _ => None,
    }
}

/// `outbound.client_cert` / `client_key`: a matching pair that rustls takes
/// as a client certificate.
fn client_pair(
    cx: &mut Check<'_>,
    cert: &Path,
    key: &Path,
) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let pair = match crate::tls::certs::load_pair(cert, key) {
        Ok(p) => p,
        Err(e) => {
            cx.pair_failed(e, key, "outbound.client_cert", "outbound.client_key");
            return None;
        }
    };
    let chain = pair.certified.cert.clone();
    let built = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_client_auth_cert(chain.clone(), pair.key_der.clone_key())
        });
    match built {
        Ok(_) => Some((chain, pair.key_der)),
        Err(e) => {
            cx.fail(
                "outbound.client_key",
                format!(
                    "{} cannot be used as a client certificate with {}: {e}",
                    cert.display(),
                    key.display()
                ),
            );
            None
        }
    }
}

/// The `[alerts]` sinks, with their trust anchors and token file.
fn alert_sinks(
    cx: &mut Check<'_>,
    digests: &mut BTreeMap<&'static str, [u8; 32]>,
) -> Option<AlertMaterial> {
    let config = cx.config;
    let mut ok = true;
    let mut out = AlertMaterial {
        command: config.alert_command.clone().map(CommandSink::new),
        ..AlertMaterial::default()
    };
    let extra = match &config.alert_extra_roots {
        None => Vec::new(),
        Some(p) => match crate::tls::load_certs(p) {
            Ok(c) => {
                digests.insert("alerts.extra_roots", der_digest(&c));
                c
            }
            Err(e) => {
                cx.fail("alerts.extra_roots", e.to_string());
                return None;
            }
        },
    };
    let target = match HttpTarget::new(&extra) {
        Ok(t) => t,
        Err(e) => {
            let key = "alerts.extra_roots";
            cx.fail(key, e.to_string());
            return None;
        }
    };
    if let Some(url) = &config.alert_webhook {
        match WebhookSink::new(url, target.clone()) {
            Ok(s) => out.webhook = Some(s),
            Err(e) => {
                cx.fail("alerts.webhook", e.to_string());
                ok = false;
            }
        }
    }
    if let Some((hs, room, token)) = &config.alert_matrix {
        match MatrixSink::new(hs, room, token, target) {
            Ok(s) => {
                if let Ok(bytes) = std::fs::read(token) {
                    digests.insert("alerts.matrix_token_file", digest(&[&bytes]));
                }
                out.matrix = Some(s);
            }
            Err(e) => {
                let msg = e.to_string();
                let key = if msg.starts_with(&token.display().to_string()) {
                    "alerts.matrix_token_file"
                } else {
                    "alerts.matrix_homeserver"
                };
                cx.fail(key, msg);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn every_bad_value_and_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let text = "pins = \"p.toml\"\n[outbound]\nca_cert = \"missing.pem\"\nca_key = \"missing.key\"\nallow_ips = [\"10.0.0.0/33\"]\n";
        let cfg = dir.path().join("fedpin.toml");
        std::fs::write(&cfg, text).unwrap();
        let e = Prepared::load(&cfg).unwrap_err();
        let keys: Vec<&str> = e.errors.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "pins",
                "outbound.ca_cert",
                "outbound.ca_key",
                "outbound.allow_ips[0]"
            ],
            "{e}"
        );
    }

    #[test]
    fn every_problem_is_listed_with_key_line_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        crate::tls::ca::init_ca(&d.join("ca")).unwrap();
        write(&d.join("cert.pem"), "not a certificate\n");
        write(&d.join("key.pem"), "not a key\n");
        write(&d.join("empty.pem"), "");
        let cfg = d.join("fedpin.toml");
        write(
            &cfg,
            "pins = \"missing.toml\"\n\
             [outbound]\nlisten = \"nope\"\nca_cert = \"ca/fedpin-ca.pem\"\nca_key = \"ca/fedpin-ca.key\"\nextra_roots = \"empty.pem\"\n\
             [inbound]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nupstream = \"http://127.0.0.1:8008\"\n",
        );
        let e = Prepared::load(&cfg).unwrap_err();
        let keys: Vec<(&str, usize)> = e.errors.iter().map(|d| (d.key.as_str(), d.line)).collect();
        assert_eq!(
            keys,
            vec![
                ("pins", 1),
                ("outbound.listen", 3),
                ("outbound.extra_roots", 6),
                ("inbound.cert", 8),
                ("inbound.key", 9),
            ],
            "{e}"
        );
        let text = e.to_string();
        assert!(text.contains("missing.toml"), "{text}");
        assert!(text.contains("empty.pem"), "{text}");
        assert!(text.contains("cert.pem"), "{text}");
        assert!(text.starts_with(&cfg.display().to_string()), "{text}");
    }

    #[test]
    fn a_good_config_prepares_and_reload_names_restart_keys() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        crate::tls::ca::init_ca(&d.join("ca")).unwrap();
        let leaf = rcgen::generate_simple_self_signed(vec!["hs.example".into()]).unwrap();
        write(&d.join("cert.pem"), &leaf.cert.pem());
        write(&d.join("key.pem"), &leaf.signing_key.serialize_pem());
        write(&d.join("pins.toml"), "version = 1\n");
        let text = "pins = \"pins.toml\"\n\
             [outbound]\nlisten = \"127.0.0.1:0\"\nca_cert = \"ca/fedpin-ca.pem\"\nca_key = \"ca/fedpin-ca.key\"\n\
             [inbound]\nlisten = \"127.0.0.1:0\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\nupstream = \"http://127.0.0.1:8008\"\n";
        let cfg = d.join("fedpin.toml");
        write(&cfg, text);
        let p = Prepared::load(&cfg).unwrap();
        assert!(p.outbound.is_some() && p.inbound.is_some());
        assert!(
            p.summary().contains("inbound: listen 127.0.0.1:0"),
            "{}",
            p.summary()
        );
        let base = p.baseline();
        assert!(base.restart_needed(&p).is_empty());

        // Edge rules are live; a listen address and the CA path are not.
        write(
            &cfg,
            &text
                .replace(
                    "[inbound]\nlisten = \"127.0.0.1:0\"",
                    "[inbound]\nlisten = \"127.0.0.1:1\"",
                )
                .replace(
                    "upstream =",
                    "deny_origins = [\"spam.example\"]\nupstream =",
                ),
        );
        let p2 = Prepared::load(&cfg).unwrap();
        assert_eq!(base.restart_needed(&p2), vec!["inbound.listen"]);
    }

    #[test]
    fn listeners_on_one_address_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = Config::parse(
            "[admin]\nlisten = \"0.0.0.0:9448\"\n[outbound]\nlisten = \"127.0.0.1:9448\"\nca_cert = \"a\"\nca_key = \"b\"\n",
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(e.errors.len(), 1, "{e}");
        assert!(e.to_string().contains("admin.listen"), "{e}");
        assert!(Config::parse(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\nca_cert = \"a\"\nca_key = \"b\"\n",
            dir.path(),
        )
        .is_ok());
    }
}
