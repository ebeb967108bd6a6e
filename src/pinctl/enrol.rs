//! `pinctl add`: enrol a peer. Pins come from the command line
//! (`--pin`, `--from-cert`) or from the peer itself: discover its endpoint,
//! fetch the chain it serves, let the operator choose, pin every host that
//! answered its well-known delegation too, check the entry with the proxy's
//! own verifier, record its signing keys over the pinned connection, and
//! write the entry (comments kept, validated, atomic).
//!
//! The workflow is [`enrol`]; what it shows the operator and asks them goes
//! through [`EnrolUi`], so the binary only prints. [`write()`] then edits the
//! pin file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::PinctlError;
use super::target::{Network, Reach};
use crate::cli::pinctl::{ModeArg, TrustArg};
use crate::discovery::{WellKnown, WellKnownHop};
use crate::pinfile_edit::{self, AddOutcome};
use crate::pins::{split_server_name, Mode, PeerEntry, Pin, PinSet, Policy, Trust};
use crate::probe::{self, Captured, Target};
use crate::verify::{HashedItem, Presented, Usage, VerifierCore};

/// How long connecting to a peer and fetching its chain may take.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(15);

impl From<TrustArg> for Trust {
    fn from(t: TrustArg) -> Self {
        match t {
            TrustArg::Webpki => Trust::Webpki,
            TrustArg::PinOnly => Trust::PinOnly,
        }
    }
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Enforce => Mode::Enforce,
            ModeArg::Report => Mode::Report,
        }
    }
}

/// What `pinctl add` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct EnrolRequest {
    /// The Matrix server name to enrol.
    pub server_name: String,
    /// Pins given on the command line (`--pin`).
    pub pins: Vec<String>,
    /// Certificate files to take pins from (`--from-cert`).
    pub from_cert: Vec<PathBuf>,
    /// Pin every certificate of those files, not only the first.
    pub from_cert_all: bool,
    /// How to reach the peer (`--roots`, `--connect`, `--connect-to`).
    pub reach: Reach,
    /// Trust mode to write.
    pub trust: Option<Trust>,
    /// Enforce or report.
    pub mode: Option<Mode>,
    /// Expiry, `YYYY-MM-DD` or RFC 3339.
    pub expires: Option<String>,
    /// Pin the leaf without asking.
    pub yes: bool,
    /// Do not read and record the peer's signing keys.
    pub no_signing_keys: bool,
    /// Note to write (default: when and how the peer was enrolled).
    pub note: Option<String>,
}

/// One certificate of a `--from-cert` file, and whether it is pinned.
#[derive(Debug, Clone)]
pub struct CertPin {
    /// The certificate's pin and label.
    pub item: HashedItem,
    /// Whether it is pinned (the first certificate, or all with `--from-cert-all`).
    pub pinned: bool,
}

/// What the workflow shows the operator, in order.
#[derive(Debug)]
pub enum EnrolEvent<'a> {
    /// The certificates of a `--from-cert` file.
    CertFile {
        /// The file.
        file: &'a Path,
        /// Its certificates, in file order.
        certs: &'a [CertPin],
        /// Only the first of several was pinned (no `--from-cert-all`).
        only_leaf: bool,
    },
    /// About to connect to the federation endpoint.
    Connecting {
        /// The endpoint and TLS name about to be dialled.
        target: &'a Target,
        /// How it was found.
        via: &'a str,
    },
    /// The chain a host served, before the operator chooses.
    Chain {
        /// The host.
        target: &'a Target,
        /// What it served.
        captured: &'a Captured,
    },
    /// A host that answered the well-known fetch, to be pinned too.
    Front {
        /// The host and the answer it gave.
        hop: &'a WellKnownHop,
        /// The delegation (`m.server`).
        delegated: &'a str,
    },
    /// The peer's signing keys as read over the pinned connection, or why
    /// they were not recorded.
    SigningKeys(&'a Result<Vec<String>, String>),
}

/// The operator's side of the workflow.
pub trait EnrolUi {
    /// Shows what the workflow is doing.
    fn show(&mut self, event: EnrolEvent<'_>);
    /// Asks which of `n` certificates to pin (after an
    /// [`EnrolEvent::Chain`]); `None` when no answer can come (input closed).
    /// Never asked with [`EnrolRequest::yes`].
    fn ask_choice(&mut self, n: usize) -> Result<Option<String>, PinctlError>;
}

/// An enrolment, ready to be written.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// The entry to write.
    pub entry: PeerEntry,
    /// Each TLS name enrolled live with the chain it served (the entry was
    /// checked against each); empty when the pins came from the command line.
    pub chains: Vec<(String, Vec<CertificateDer<'static>>)>,
    /// The address of the federation endpoint, when enrolled live.
    pub peer_addr: Option<SocketAddr>,
    /// How the endpoint was found, when enrolled live.
    pub via: Option<String>,
}

/// What [`write()`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Added a new entry, or extended the existing one.
    pub outcome: AddOutcome,
    /// The peer now has a single pin and no backup.
    pub single_pin: bool,
}

/// Runs the enrolment up to (not including) the write.
pub async fn enrol(req: &EnrolRequest, ui: &mut impl EnrolUi) -> Result<Enrolment, PinctlError> {
    let default_host = split_server_name(&req.server_name).map_err(PinctlError::Usage)?;
    let expires = req.expires.as_deref().map(parse_expires).transpose()?;
    let mut pins: Vec<Pin> = Vec::new();
    for p in &req.pins {
        pins.push(
            p.parse()
                .map_err(|e| PinctlError::Usage(format!("--pin \"{p}\": {e}")))?,
        );
    }
    for f in &req.from_cert {
        pins.extend(cert_file_pins(f, req.from_cert_all, ui)?);
    }
    // A bad --connect-to is a usage error even when no connection is made.
    req.reach.rules()?;
    let mut enrolment = Enrolment {
        entry: PeerEntry {
            server_name: req.server_name.clone(),
            pins,
            trust: req.trust,
            mode: req.mode,
            expires,
            note: req.note.clone(),
            ..PeerEntry::default()
        },
        chains: Vec::new(),
        peer_addr: None,
        via: None,
    };
    let today = OffsetDateTime::now_utc().date();
    if enrolment.entry.pins.is_empty() {
        let net = Network::new(&req.reach)?;
        enrol_live(req, &net, &default_host, &mut enrolment, ui).await?;
        if let (None, Some(addr), Some(via)) =
            (&enrolment.entry.note, enrolment.peer_addr, &enrolment.via)
        {
            enrolment.entry.note = Some(format!("enrolled {today} by pinctl from {addr} ({via})"));
        }
    } else if enrolment.entry.note.is_none() {
        enrolment.entry.note = Some(format!("enrolled {today} by pinctl"));
    }
    Ok(enrolment)
}

/// Writes the enrolment into the pin file at `path`.
pub fn write(path: &Path, enrolment: &Enrolment) -> Result<Written, PinctlError> {
    let outcome = pinfile_edit::add_peer(path, &enrolment.entry).map_err(PinctlError::input)?;
    let single_pin = PinSet::load(path).ok().is_some_and(|set| {
        set.by_server_name(&enrolment.entry.server_name)
            .is_some_and(|p| p.pins.len() == 1)
    });
    Ok(Written {
        outcome,
        single_pin,
    })
}

/// Parses `--expires`: RFC 3339, or a date meaning its midnight UTC.
pub fn parse_expires(s: &str) -> Result<String, PinctlError> {
    if OffsetDateTime::parse(s, &Rfc3339).is_ok() {
        return Ok(s.to_string());
    }
    let full = format!("{s}T00:00:00Z");
    if OffsetDateTime::parse(&full, &Rfc3339).is_ok() {
        return Ok(full);
    }
    Err(PinctlError::Usage(format!(
        "--expires \"{s}\" is not a date (use YYYY-MM-DD or RFC 3339)"
    )))
}

/// Parses the operator's answer to "which certificate(s)?" for a chain of
/// `n`: 1-based numbers separated by commas, empty for the leaf. Returns
/// 0-based indices without repeats, in the order given.
pub fn parse_choice(line: &str, n: usize) -> Result<Vec<usize>, PinctlError> {
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
                PinctlError::Usage(format!("\"{}\" is not a number from 1 to {n}", part.trim()))
            })?;
        if !out.contains(&(k - 1)) {
            out.push(k - 1);
        }
    }
    Ok(out)
}

/// The pins of a `--from-cert` file: the first certificate (the leaf, as
/// `--yes` pins for a live chain), all of them with `--from-cert-all`.
fn cert_file_pins(file: &Path, all: bool, ui: &mut impl EnrolUi) -> Result<Vec<Pin>, PinctlError> {
    let bytes = std::fs::read(file)
        .map_err(|e| PinctlError::Input(format!("{}: cannot read: {e}", file.display())))?;
    let items = crate::verify::pins_of_pem_or_der(&bytes)
        .map_err(|e| PinctlError::Input(format!("{}: {e}", file.display())))?;
    let only_leaf = items.len() > 1 && !all;
    let certs: Vec<CertPin> = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| CertPin {
            item,
            pinned: i == 0 || all,
        })
        .collect();
    ui.show(EnrolEvent::CertFile {
        file,
        certs: &certs,
        only_leaf,
    });
    Ok(certs
        .iter()
        .filter(|c| c.pinned)
        .map(|c| c.item.pin)
        .collect())
}

/// The live part: discover, fetch and choose (the endpoint, then every
/// well-known front), self-check, read the signing keys.
async fn enrol_live(
    req: &EnrolRequest,
    net: &Network,
    default_host: &str,
    enrolment: &mut Enrolment,
    ui: &mut impl EnrolUi,
) -> Result<(), PinctlError> {
    let trust = req.trust.unwrap_or(Trust::Webpki);
    let resolved = net.resolve(&req.server_name).await?;
    let target = &resolved.target;
    ui.show(EnrolEvent::Connecting {
        target,
        via: &resolved.via,
    });
    let (captured, chosen) = pick(&net.core, target, trust, req.yes, ui).await?;
    let entry = &mut enrolment.entry;
    entry.pins.extend(chosen);
    enrolment.chains = vec![(target.tls_name.clone(), captured.chain.clone())];
    if target.tls_name != default_host {
        entry.hosts = Some(vec![target.tls_name.clone()]);
    }
    if let Some(wk) = &resolved.well_known {
        enrol_fronts(net, wk, &target.tls_name, trust, req.yes, enrolment, ui).await?;
    }
    // Self-check with the proxy's own verifier before anything is written:
    // every name enrolled must pass under the entry about to be written.
    let candidate = PinSet::from_entries(Policy::default(), std::slice::from_ref(&enrolment.entry))
        .map_err(PinctlError::input)?;
    self_check(&net.core, &candidate, &enrolment.chains)?;
    // The peer's Matrix signing keys, read over TLS checked by the entry
    // just chosen (SPEC 3, "Signing keys").
    let read = if req.no_signing_keys {
        Err("--no-signing-keys".to_owned())
    } else {
        super::signing::fetch(&net.core, &candidate, target, &req.server_name).await
    };
    ui.show(EnrolEvent::SigningKeys(&read));
    if let Ok(keys) = read {
        enrolment.entry.signing_keys = keys;
    }
    enrolment.peer_addr = Some(captured.peer_addr);
    enrolment.via = Some(resolved.via.clone());
    Ok(())
}

/// Delegation: every host that answered the well-known fetch is a TLS name
/// this peer's federation depends on; each is pinned with keys enrolled for
/// it (SPEC 3, "Delegation is part of the peer").
async fn enrol_fronts(
    net: &Network,
    wk: &WellKnown,
    endpoint: &str,
    trust: Trust,
    yes: bool,
    enrolment: &mut Enrolment,
    ui: &mut impl EnrolUi,
) -> Result<(), PinctlError> {
    let delegated = wk.delegated.to_string();
    enrolment.entry.delegation = Some(delegated.clone());
    let mut seen: Vec<(&str, u16)> = Vec::new();
    for hop in &wk.hops {
        if seen.contains(&(hop.host.as_str(), hop.port)) {
            continue;
        }
        seen.push((hop.host.as_str(), hop.port));
        ui.show(EnrolEvent::Front {
            hop,
            delegated: &delegated,
        });
        let (fc, chosen) = pick(&net.core, &net.front(hop), trust, yes, ui).await?;
        enrolment.chains.push((hop.host.clone(), fc.chain));
        let entry = &mut enrolment.entry;
        if hop.host == endpoint {
            // The same name on another port (e.g. a web server on 443 in
            // front of the homeserver on 8448): both keys are valid for it.
            merge(&mut entry.pins, chosen);
        } else if let Some((_, list)) = entry.host_pins.iter_mut().find(|(h, _)| *h == hop.host) {
            merge(list, chosen);
        } else {
            entry.host_pins.push((hop.host.clone(), chosen));
        }
    }
    Ok(())
}

/// Appends the pins of `new` that `list` does not hold yet.
fn merge(list: &mut Vec<Pin>, new: Vec<Pin>) {
    for p in new {
        if !list.contains(&p) {
            list.push(p);
        }
    }
}

/// Connects to `target`, shows its chain, and returns the pins the operator
/// chose (`yes`: the leaf) with the capture.
async fn pick(
    core: &VerifierCore,
    target: &Target,
    trust: Trust,
    yes: bool,
    ui: &mut impl EnrolUi,
) -> Result<(Captured, Vec<Pin>), PinctlError> {
    let captured = probe::capture(core, target, CAPTURE_TIMEOUT)
        .await
        .map_err(PinctlError::input)?;
    ui.show(EnrolEvent::Chain {
        target,
        captured: &captured,
    });
    if trust == Trust::Webpki {
        if let Err(e) = &captured.webpki {
            return Err(PinctlError::Input(format!(
                "{} does not validate under Web PKI ({e}); pin it with --trust pin-only (self-signed peers) or pass its CA with --roots",
                target.tls_name
            )));
        }
    }
    let chosen: Vec<usize> = if yes {
        vec![0]
    } else {
        let n = captured.entries.len();
        match ui.ask_choice(n)? {
            Some(line) => parse_choice(&line, n)?,
            None => {
                return Err(PinctlError::Usage(
                    "no choice given (standard input closed); use --yes to pin the leaf".into(),
                ))
            }
        }
    };
    let mut pins = Vec::new();
    for i in chosen {
        if trust == Trust::PinOnly && i != 0 {
            return Err(PinctlError::Usage(
                "trust = pin-only checks only the leaf key: choose [1]".into(),
            ));
        }
        let Some(e) = captured.entries.get(i) else {
            continue;
        };
        if e.role.starts_with("sent, not on") {
            return Err(PinctlError::Usage(format!(
                "[{}] is not on the validated path and would never match",
                i + 1
            )));
        }
        pins.push(e.pin);
    }
    Ok((captured, pins))
}

/// Runs the proxy's verifier on each enrolled name's chain under the
/// candidate entry: a pin it would reject is never written.
fn self_check(
    core: &VerifierCore,
    candidate: &PinSet,
    chains: &[(String, Vec<CertificateDer<'static>>)],
) -> Result<(), PinctlError> {
    for (name, chain) in chains {
        let Some((ee, intermediates)) = chain.split_first() else {
            continue;
        };
        let server_name = ServerName::try_from(name.clone()).ok();
        let verdict = core.evaluate(
            candidate,
            &Presented {
                lookup: name,
                name: server_name.as_ref(),
                end_entity: ee,
                intermediates,
                now: UnixTime::now(),
                usage: Usage::Server,
            },
        );
        if !verdict.is_accept() {
            return Err(PinctlError::Input(format!(
                "refusing to write a pin the verifier would reject for {name}: {verdict}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_forms() {
        assert_eq!(parse_choice("\n", 3).unwrap(), [0]);
        assert_eq!(parse_choice(" 2, 1,2 ", 3).unwrap(), [1, 0]);
        for bad in ["0", "4", "x", "1,,2"] {
            assert!(
                matches!(parse_choice(bad, 3), Err(PinctlError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn expires_forms() {
        assert_eq!(parse_expires("2027-06-01").unwrap(), "2027-06-01T00:00:00Z");
        assert_eq!(
            parse_expires("2027-06-01T12:00:00+02:00").unwrap(),
            "2027-06-01T12:00:00+02:00"
        );
        assert!(matches!(
            parse_expires("tomorrow"),
            Err(PinctlError::Usage(_))
        ));
    }

    struct Silent;

    impl EnrolUi for Silent {
        fn show(&mut self, _: EnrolEvent<'_>) {}
        fn ask_choice(&mut self, _: usize) -> Result<Option<String>, PinctlError> {
            Ok(None)
        }
    }

    #[tokio::test]
    async fn offline_enrolment_is_a_typed_entry() {
        let pin = Pin::of_spki(&[7]);
        let req = EnrolRequest {
            server_name: "a.example:8448".into(),
            pins: vec![pin.to_string()],
            expires: Some("2030-01-01".into()),
            ..EnrolRequest::default()
        };
        let e = enrol(&req, &mut Silent).await.unwrap();
        assert_eq!(e.entry.pins, [pin]);
        assert_eq!(e.entry.expires.as_deref(), Some("2030-01-01T00:00:00Z"));
        assert!(e
            .entry
            .note
            .as_deref()
            .is_some_and(|n| n.ends_with("by pinctl")));
        assert!(e.chains.is_empty());
        let set = PinSet::from_entries(Policy::default(), std::slice::from_ref(&e.entry)).unwrap();
        assert!(set.lookup("a.example").is_some_and(|p| p.has_pin(&pin)));
        let bad = EnrolRequest {
            pins: vec!["sha256/nope".into()],
            ..req
        };
        assert!(matches!(
            enrol(&bad, &mut Silent).await,
            Err(PinctlError::Usage(_))
        ));
    }
}
