//! The offline `pinctl` commands: load, lint (`check`), describe (`list
//! --json`) and hash (`hash`).

use std::io::Read;
use std::path::Path;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::PinctlError;
use crate::pins::{Peer, PinFileError, PinSet};
use crate::verify::HashedItem;

/// How close to expiry a peer's pins draw a `check` warning.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// Loads the pin file for a command that needs it: a file that does not
/// load is bad input (its located errors are the message).
pub fn load(path: &Path) -> Result<PinSet, PinctlError> {
    PinSet::load(path).map_err(PinctlError::input)
}

/// What `pinctl check` found in a pin file it could read.
#[derive(Debug)]
pub enum Lint {
    /// The file is valid; the warnings (the parser's, then pins expired or
    /// expiring within 30 days), each one sentence.
    Valid {
        /// The validated set.
        set: Box<PinSet>,
        /// Findings that do not make the file invalid.
        warnings: Vec<String>,
    },
    /// The file does not parse or validate: every located error.
    Invalid(PinFileError),
}

/// Lints the pin file at `now`. Only a file that cannot be read is an error.
pub fn lint(path: &Path, now: OffsetDateTime) -> Result<Lint, PinctlError> {
    let bytes = std::fs::read(path).map_err(|e| {
        PinctlError::Input(format!("{}: cannot read the pin file: {e}", path.display()))
    })?;
    let set = match PinSet::parse_bytes(&bytes) {
        Ok(set) => set,
        Err(e) => return Ok(Lint::Invalid(e)),
    };
    let mut warnings: Vec<String> = set.warnings.iter().map(|w| w.to_string()).collect();
    for p in set.peers() {
        if p.is_expired(now) {
            warnings.push(format!(
                "line {}: \"{}\": pins expired; policy.on_expired applies",
                p.line, p.server_name
            ));
        } else if let Some(e) = p.expires {
            let days = (e - now).whole_days();
            if days < EXPIRY_WARNING_DAYS {
                warnings.push(format!(
                    "line {}: \"{}\": pins expire in {days} days",
                    p.line, p.server_name
                ));
            }
        }
    }
    Ok(Lint::Valid {
        set: Box::new(set),
        warnings,
    })
}

/// One peer as `pinctl list --json` shows it.
pub fn peer_json(p: &Peer) -> serde_json::Value {
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

/// The whole set as `pinctl list --json` shows it: the policy and the peers.
pub fn set_json(set: &PinSet) -> serde_json::Value {
    serde_json::json!({
        "policy": set.policy,
        "peers": set.peers().iter().map(peer_json).collect::<Vec<_>>(),
    })
}

/// The pins of every certificate and key in `file` (PEM or one DER item;
/// `-` is standard input).
pub fn hash(file: &str) -> Result<Vec<HashedItem>, PinctlError> {
    let mut bytes = Vec::new();
    if file == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| PinctlError::Input(format!("cannot read stdin: {e}")))?;
    } else {
        bytes = std::fs::read(file)
            .map_err(|e| PinctlError::Input(format!("{file}: cannot read: {e}")))?;
    }
    crate::verify::pins_of_pem_or_der(&bytes)
        .map_err(|e| PinctlError::Input(format!("{file}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pins::Pin;

    #[test]
    fn lint_warns_on_expiry_and_reports_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.toml");
        let pin = |n: u8| Pin::of_spki(&[n]).to_string();
        std::fs::write(
            &path,
            format!(
                "version = 1\n[[peer]]\nserver_name = \"a.example\"\npins = [\"{}\", \"{}\"]\nexpires = \"2030-01-10T00:00:00Z\"\n",
                pin(1),
                pin(2)
            ),
        )
        .unwrap();
        let now = OffsetDateTime::parse("2030-01-01T00:00:00Z", &Rfc3339).unwrap();
        match lint(&path, now).unwrap() {
            Lint::Valid { warnings, .. } => {
                assert_eq!(warnings, ["line 3: \"a.example\": pins expire in 9 days"])
            }
            Lint::Invalid(e) => panic!("{e}"),
        }
        std::fs::write(&path, "version = 2\n").unwrap();
        assert!(matches!(lint(&path, now).unwrap(), Lint::Invalid(_)));
        assert!(matches!(
            lint(&dir.path().join("missing.toml"), now),
            Err(PinctlError::Input(_))
        ));
    }
}
