//! Pin file parsing and validation (SPEC section 3).
//!
//! Two phases, as sozu does its config: raw `serde` structs with
//! `deny_unknown_fields` and spans, then [`PinSet::parse`] validates them into
//! an immutable [`PinSet`] or returns every error with its line and key.

/// The pin set's indexes: a name or pin to its entry. Keys come from the
/// operator's pin file, so there is no flooding to resist; foldhash (with
/// a per-process random seed) instead of SipHash, which was a sixth of the
/// instructions of a reload that reuses its sections, and is on every
/// handshake's lookup.
type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use toml::Spanned;

use super::pin::Pin;

/// A pin-file keyword: an enum whose variants are written as fixed words.
/// Each word is given once, here: serde reads and writes it, `Display`
/// prints it, so the file, alerts and `pinctl` output cannot disagree.
macro_rules! keyword_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $word:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $word)] $v,)+
        }

        impl $name {
            /// The word the pin file uses for this value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $word,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_enum! {
    /// What to do with a host that has no `[[peer]]` entry.
    UnpinnedPolicy {
        /// Accept the peer if Web PKI validates its chain for the name.
        Webpki = "webpki",
        /// Refuse the peer.
        Deny = "deny",
    }
}

keyword_enum! {
    /// What to do with a peer whose pins passed their `expires` date.
    ExpiredPolicy {
        /// Fall back to Web PKI validation (with a `pin_expired` alert).
        Webpki = "webpki",
        /// Refuse the peer.
        Deny = "deny",
    }
}

keyword_enum! {
    /// How a peer's pins relate to Web PKI.
    Trust {
        /// The chain must validate for the name AND a pin must be on the validated path.
        Webpki = "webpki",
        /// Only the leaf's key counts; name, expiry and chain are not required.
        PinOnly = "pin-only",
    }
}

keyword_enum! {
    /// Whether a pin mismatch blocks the connection.
    Mode {
        /// A mismatch blocks the connection.
        Enforce = "enforce",
        /// A mismatch alerts; the connection proceeds iff Web PKI validation passes.
        Report = "report",
    }
}

/// The `[policy]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Policy {
    /// Policy for hosts without an entry.
    pub unpinned: UnpinnedPolicy,
    /// Policy for peers whose pins expired.
    pub on_expired: ExpiredPolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            unpinned: UnpinnedPolicy::Webpki,
            on_expired: ExpiredPolicy::Webpki,
        }
    }
}

/// One validated `[[peer]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The Matrix server name, as written (may carry a port).
    pub server_name: String,
    /// TLS names this peer answers as, normalised (lowercase, no trailing dot).
    pub hosts: Vec<String>,
    /// Accepted SPKI pins (any one matching is a match).
    pub pins: Vec<Pin>,
    /// How pins relate to Web PKI.
    pub trust: Trust,
    /// Enforce or report.
    pub mode: Mode,
    /// When the pins stop being enforced, if ever.
    pub expires: Option<OffsetDateTime>,
    /// Free-form note.
    pub note: Option<String>,
    /// 1-based line of the entry's `server_name` in the file.
    pub line: usize,
    /// The `.well-known/matrix/server` delegation `pinctl add` saw
    /// (`m.server` in canonical form, e.g. `matrix-federation.example.org:443`).
    /// For such a peer, the well-known answer that passes through fedpin must
    /// name exactly this (SPEC 4.11).
    pub delegation: Option<String>,
    /// TLS names with keys of their own (`host_pins`): typically the server
    /// name's own host, the well-known front, whose certificate and key
    /// differ from the federation endpoint's. A host here is checked against
    /// its own list only, never against `pins`.
    pub host_pins: Vec<(String, Vec<Pin>)>,
    /// The peer's Matrix server signing keys (`signing_keys`), recorded by
    /// `pinctl add` over pinned TLS. When set, a request from this origin
    /// must be signed by one of them (SPEC 4.12).
    pub signing_keys: Vec<crate::matrix::signing::VerifyKey>,
}

impl Peer {
    /// Whether the pins have expired at `now`.
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }

    /// Whether `pin` is one of this peer's pins.
    pub fn has_pin(&self, pin: &Pin) -> bool {
        self.pins.iter().any(|p| p == pin)
    }
}

/// One `[[peer]]` entry as typed values, before validation: what `pinctl
/// add` builds and [`crate::pinfile_edit::add_peer`] writes. It becomes a
/// [`Peer`] only through [`PinSet::from_entries`] (or the file it is written
/// to), which apply the pin-file rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerEntry {
    /// Matrix server name (may carry a port).
    pub server_name: String,
    /// TLS names, when they differ from the server name's host.
    pub hosts: Option<Vec<String>>,
    /// The pins.
    pub pins: Vec<Pin>,
    /// Trust mode (when absent: written as `webpki` for a new entry, left
    /// alone for an existing one).
    pub trust: Option<Trust>,
    /// Enforce or report (when absent: `enforce` for a new entry, left alone
    /// for an existing one).
    pub mode: Option<Mode>,
    /// RFC 3339 expiry, as written.
    pub expires: Option<String>,
    /// The operator's free-text note about the peer (never interpreted).
    pub note: Option<String>,
    /// The well-known delegation seen at enrolment (`m.server`).
    pub delegation: Option<String>,
    /// Pins of hosts with keys of their own (the well-known front).
    pub host_pins: Vec<(String, Vec<Pin>)>,
    /// Matrix signing keys, `ed25519:ID=BASE64` (replace the recorded ones).
    pub signing_keys: Vec<String>,
}

impl PeerEntry {
    /// The entry as the raw form the file parser produces (no spans), and
    /// the `host_pins` hosts named more than once (a map cannot hold them).
    fn to_raw(&self) -> (RawPeer, Vec<String>) {
        let s = |v: &str| Spanned::new(0..0, v.to_owned());
        let pins =
            |list: &[Pin]| Spanned::new(0..0, list.iter().map(|p| s(&p.to_string())).collect());
        let mut dups = Vec::new();
        let mut host_pins = std::collections::BTreeMap::new();
        for (h, list) in &self.host_pins {
            if host_pins.insert(h.clone(), pins(list)).is_some() {
                dups.push(h.clone());
            }
        }
        let raw = RawPeer {
            server_name: s(&self.server_name),
            hosts: self
                .hosts
                .as_ref()
                .map(|h| h.iter().map(|x| s(x)).collect()),
            pins: pins(&self.pins),
            delegation: self.delegation.as_deref().map(s),
            signing_keys: Some(self.signing_keys.iter().map(|k| s(k)).collect()),
            host_pins: (!self.host_pins.is_empty()).then_some(host_pins),
            trust: self.trust,
            mode: self.mode,
            expires: self.expires.as_deref().map(s),
            note: self.note.clone(),
        };
        (raw, dups)
    }
}

/// One located problem in a pin file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line (0 when the problem has no location).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// The key the problem is about, e.g. `peer[2].pins[0]`.
    pub key: String,
    /// One sentence saying what is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "line {}, column {}: ", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// A pin file that failed to parse or validate; every error found, each located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PinFileError {
    /// The file, when known.
    pub path: Option<String>,
    /// The problems, in file order.
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for PinFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.as_deref().unwrap_or("<pin file>");
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{path}: {e}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: Option<Spanned<i64>>,
    #[serde(default)]
    policy: Option<RawPolicy>,
    #[serde(default)]
    peer: Vec<Spanned<RawPeer>>,
}

/// The head of a pin file parsed alone (the text before its first
/// `[[peer]]` line): `peer` must not be there at all, not even as an
/// empty array (the later headers could not extend it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHead {
    version: Option<Spanned<i64>>,
    #[serde(default)]
    policy: Option<RawPolicy>,
    peer: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    unpinned: Option<UnpinnedPolicy>,
    on_expired: Option<ExpiredPolicy>,
}

/// A `[[peer]]` table as read (by the TOML crate, or by the plain reader,
/// [`super::plain`], which must give the same).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    pub(super) server_name: Spanned<String>,
    pub(super) hosts: Option<Vec<Spanned<String>>>,
    pub(super) pins: Spanned<Vec<Spanned<String>>>,
    pub(super) delegation: Option<Spanned<String>>,
    pub(super) signing_keys: Option<Vec<Spanned<String>>>,
    #[allow(clippy::type_complexity)]
    pub(super) host_pins: Option<std::collections::BTreeMap<String, Spanned<Vec<Spanned<String>>>>>,
    pub(super) trust: Option<Trust>,
    pub(super) mode: Option<Mode>,
    pub(super) expires: Option<Spanned<String>>,
    pub(super) note: Option<String>,
}

/// The TOML crate's reading of `section` as a text with one `[[peer]]`
/// table and nothing else (its `Debug` form, spans included): what the
/// plain reader must give when it reads a section.
pub(super) fn toml_reading(section: &str) -> Option<String> {
    match toml_section(section)?.as_slice() {
        [one] => Some(format!("{one:?}")),
        _ => None,
    }
}

/// The peers of a section read alone by the TOML crate; `None` if it
/// fails, or gives `version` or `[policy]` (which the whole file could
/// reject as given twice).
fn toml_section(section: &str) -> Option<PeerList> {
    let doc: RawFile = toml::from_str(section).ok()?;
    let alone = doc.version.is_none() && doc.policy.is_none();
    alone.then_some(doc.peer)
}

/// A file this large (a 10,000-peer file is over a megabyte) is parsed
/// in sections on several threads; below, starting threads costs more
/// than it saves. (Each thread's share is at least this much.)
const PIECE_MIN: usize = 128 * 1024;

/// At most this many threads, whatever the cores.
const MAX_PIECES: usize = 4;

/// A file with at least this many peers has them checked on several
/// threads (as many as there are pieces at most); the same for the
/// sections a reload has to parse.
const CHECK_PARALLEL_MIN: usize = 1000;

/// The `[[peer]]` peers of one section (or of the whole file), spans
/// counting from its start.
type PeerList = Vec<Spanned<RawPeer>>;

/// What a section of the text a set was parsed from gave, for a reload to
/// take instead of parsing and checking it again: the index of its one
/// peer in the set, and the line its header is on. `None` for a section
/// that is not taken (more than one peer, or its check had something to
/// say: a reload checks it again, so every finding is located in the new
/// text).
#[derive(Debug, Clone, Copy)]
struct SectionPeer {
    peer: usize,
    start_line: usize,
}

/// A pin file's sections ([`super::pieces::Sections`]).
type ParsedSections = super::pieces::Sections<Option<SectionPeer>>;

/// The peers of a section (or of the whole file) as parsed, or one taken
/// from the set before (`'p`).
enum Group<'p> {
    /// Parsed from the text, spans counting from `base`.
    Parsed { base: usize, peers: PeerList },
    /// The peer of an unchanged section in the set before, and the line
    /// it moved to with the section (it is copied on the checking threads).
    Reused { peer: &'p Peer, line: usize },
    /// A section's one peer, checked where it was read (or copied from
    /// the set before): [`Cut::groups`].
    Checked(Box<Checked>),
}

impl Group<'_> {
    fn len(&self) -> usize {
        match self {
            Group::Parsed { peers, .. } => peers.len(),
            Group::Reused { .. } | Group::Checked(_) => 1,
        }
    }

    /// `groups` in runs of `per` peers each (the last may have fewer), in
    /// order, each with the index of its first peer: a thread's share of
    /// the checks. Only a group larger than the room left in a run (the
    /// whole file's one group) is split; the others are moved whole, not
    /// peer by peer.
    fn runs(groups: Vec<Self>, per: usize) -> Vec<(usize, Vec<Self>)> {
        let per = per.max(1);
        let mut runs: Vec<(usize, Vec<Self>)> = Vec::new();
        // Peers placed in runs so far, and in the last run.
        let (mut placed, mut filled) = (0, per);
        for mut group in groups {
            while group.len() > 0 {
                if filled == per {
                    runs.push((placed, Vec::new()));
                    filled = 0;
                }
                let room = per - filled;
                let rest = match &mut group {
                    Group::Parsed { base, peers } if peers.len() > room => Some(Group::Parsed {
                        base: *base,
                        peers: peers.split_off(room),
                    }),
                    _ => None,
                };
                filled += group.len();
                placed += group.len();
                if let Some((_, run)) = runs.last_mut() {
                    run.push(group);
                }
                match rest {
                    Some(r) => group = r,
                    None => break,
                }
            }
        }
        runs
    }
}

/// A text cut into `[[peer]]` sections, for [`Parsed::in_sections`].
struct Cut<'a, 'p> {
    text: &'a str,
    lines: &'a LineIndex,
    prior: Option<&'p PinSet>,
    ranges: &'a [std::ops::Range<usize>],
    hashes: &'a [u64],
    /// The line of each section's header.
    start_lines: &'a [usize],
}

impl<'p> Cut<'_, 'p> {
    /// The peer of section `k` in `prior`, if the section's bytes are
    /// those of one `prior` took from a section, with the line it moved to.
    fn taken(&self, k: usize) -> Option<Group<'p>> {
        let prior = self.prior?;
        let range = self.ranges.get(k)?.clone();
        let bytes = self.text.as_bytes().get(range)?;
        let at = (*prior.sections.as_ref()?.get(*self.hashes.get(k)?, bytes)?)?;
        let peer = prior.peers.get(at.peer)?;
        let line = peer.line.checked_sub(at.start_line)? + *self.start_lines.get(k)?;
        Some(Group::Reused { peer, line })
    }

    /// Section `k` read alone: the plain reader's one peer, or the TOML
    /// crate's peers (`None` if it fails, or gives `version` or `policy`);
    /// spans count from the returned base.
    fn read(&self, k: usize) -> Option<(usize, PeerList)> {
        let range = self.ranges.get(k)?.clone();
        let base = range.start;
        let section = self.text.get(range)?;
        match super::plain::read_section(section) {
            Some(peer) => Some((base, vec![peer])),
            None => Some((base, toml_section(section)?)),
        }
    }

    /// Section `k`'s group, and whether it was taken from `prior`. With
    /// `check`, a section of one peer is checked here (its index is `k`:
    /// right only if every section holds one peer, which the caller sees).
    fn group(&self, k: usize, check: bool) -> Option<(Group<'p>, bool)> {
        if let Some(taken) = self.taken(k) {
            return Some(match taken {
                Group::Reused { peer, line } if check => (
                    Group::Checked(Box::new(Checked::reused(k, peer, line))),
                    true,
                ),
                other => (other, true),
            });
        }
        let (base, peers) = self.read(k)?;
        Some(match peers.as_slice() {
            [one] if check => {
                let checked = PeerCheck::run(self.lines, base, k, one);
                (Group::Checked(Box::new(checked)), false)
            }
            _ => (Group::Parsed { base, peers }, false),
        })
    }

    /// Every section's group, in order, read on up to `threads` threads,
    /// and how many were taken from `prior`; `None` if a section cannot be
    /// read alone (the whole text must be parsed). With `check`, each is
    /// checked on the thread that read it: `Some(None)` then if a section
    /// does not hold exactly one peer (the peers' indexes are not the
    /// sections'; the caller reads again without checking).
    #[allow(clippy::type_complexity)]
    fn groups(&self, threads: usize, check: bool) -> Option<Option<(Vec<Group<'p>>, usize)>> {
        let all: Vec<usize> = (0..self.ranges.len()).collect();
        let per = all.len().div_ceil(threads.max(1)).max(1);
        let chunks: Vec<&[usize]> = all.chunks(per).collect();
        let read = super::pieces::on_threads(chunks, |chunk| {
            chunk
                .iter()
                .map(|k| self.group(*k, check))
                .collect::<Option<Vec<_>>>()
        })?;
        let mut groups = Vec::with_capacity(all.len());
        let mut reused = 0;
        for (group, taken) in read
            .into_iter()
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .flatten()
        {
            let unchecked = matches!(group, Group::Parsed { .. });
            if check && unchecked {
                return Some(None);
            }
            reused += usize::from(taken);
            groups.push(group);
        }
        Some(Some((groups, reused)))
    }
}

/// Where a text's sections are: what a set parsed in sections keeps
/// ([`ParsedSections`]) once its peers are checked.
struct Layout {
    /// The text's bytes.
    keep: bytes::Bytes,
    ranges: Vec<std::ops::Range<usize>>,
    hashes: Vec<u64>,
    /// The line of each section's header.
    start_lines: Vec<usize>,
    /// How many sections were taken from the set before.
    reused: usize,
}

/// A pin file's TOML, parsed whole or in sections: the head's `version`
/// and `[policy]`, and the peers in groups (one per section, or one for
/// the whole file).
struct Parsed<'p> {
    version: Option<Spanned<i64>>,
    policy: Option<RawPolicy>,
    groups: Vec<Group<'p>>,
    /// Where the sections are (when parsed in sections; a group each).
    layout: Option<Layout>,
}

impl<'p> Parsed<'p> {
    /// How many peers.
    fn peer_count(&self) -> usize {
        self.groups.iter().map(Group::len).sum()
    }

    /// The whole text as one document: the parse that decides.
    fn whole(text: &str, lines: &LineIndex) -> Result<Self, PinFileError> {
        let file: RawFile = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| lines.locate(s.start)).unwrap_or((0, 0));
            PinFileError {
                path: None,
                errors: vec![Diagnostic {
                    line,
                    column,
                    key: String::new(),
                    message: e.message().trim().to_string(),
                }],
            }
        })?;
        Ok(Parsed {
            version: file.version,
            policy: file.policy,
            groups: vec![Group::Parsed {
                base: 0,
                peers: file.peer,
            }],
            layout: None,
        })
    }

    /// The text cut at every `[[peer]]` line ([`super::pieces`]), each
    /// section parsed alone on up to `threads` threads, or, when its bytes
    /// are those of a section of `prior` that can be taken, its peer taken
    /// from `prior`; `None` when the text cannot be cut, or when anything
    /// about the sections is not what the whole would give: then the whole
    /// is parsed. `text` is `keep`'s bytes, kept for the next reload.
    ///
    /// The sections mean what the whole means when: the head before the
    /// first `[[peer]]` line parses alone and has no `peer` (so that line
    /// is a real table header, not text in a multi-line string, and `peer`
    /// is an array of tables from there on); every section parses alone
    /// (so each cut is a real header too: a cut inside a string or array
    /// leaves the section before it unterminated); and no section gives
    /// `version` or `[policy]` (which the whole could reject as given
    /// twice). A section taken from `prior` parsed alone before, from the
    /// same bytes, to one peer whose check found nothing to report: what
    /// the check gives depends on the section's text alone, but for the
    /// peer's line, which moves with the section.
    fn in_sections(
        text: &str,
        lines: &LineIndex,
        threads: usize,
        prior: Option<&'p PinSet>,
        keep: bytes::Bytes,
        check_min: usize,
    ) -> Option<Self> {
        let first = super::pieces::next_header(text, 0)?;
        let head: RawHead = toml::from_str(&text[..first]).ok()?;
        if head.peer.is_some() {
            return None;
        }
        let ranges = super::pieces::section_ranges(text, first);
        let bytes = text.as_bytes();
        let hashes: Vec<u64> = ranges
            .iter()
            .map(|r| super::pieces::section_hash(&bytes[r.clone()]))
            .collect();
        let start_lines: Vec<usize> = ranges.iter().map(|r| lines.locate(r.start).0).collect();
        let cut = Cut {
            text,
            lines,
            prior,
            ranges: &ranges,
            hashes: &hashes,
            start_lines: &start_lines,
        };
        let threads = if ranges.len() >= check_min {
            threads.max(1)
        } else {
            1
        };
        // Each section read and checked on one thread (one hand-off), or,
        // when a section does not hold exactly one peer, read first and
        // checked after.
        let (groups, reused) = match cut.groups(threads, true)? {
            Some(done) => done,
            None => cut.groups(threads, false)??,
        };
        Some(Parsed {
            version: head.version,
            policy: head.policy,
            groups,
            layout: Some(Layout {
                keep,
                ranges,
                hashes,
                start_lines,
                reused,
            }),
        })
    }
}

/// An immutable, validated pin set with O(1) lookup by TLS name.
#[derive(Debug, Clone)]
pub struct PinSet {
    /// The `[policy]` table.
    pub policy: Policy,
    peers: Vec<Peer>,
    /// One record per `host_pins` host: the peer with that host's pins.
    host_views: Vec<Peer>,
    by_host: Map<String, Slot>,
    by_server_name: Map<String, usize>,
    by_pin: Map<Pin, Slots>,
    /// Lint findings that do not make the file invalid (e.g. a peer with a single pin).
    pub warnings: Vec<Diagnostic>,
    /// The file's bytes, as loaded: a reload compares what it reads with
    /// them to tell an unchanged file (cheaper than hashing 1.4 MB).
    source: bytes::Bytes,
    /// SHA-256 of `source`, computed when first asked for (`/pins`).
    hash: std::sync::OnceLock<[u8; 32]>,
    /// What the file's sections parsed to (a large file), for the next
    /// reload to reuse ([`PinSet::parse_source_after`]).
    sections: Option<Arc<ParsedSections>>,
    /// Reload generation (0 until a store assigns one).
    pub generation: u64,
}

impl PinSet {
    /// An empty set with the given policy (no file).
    pub fn empty(policy: Policy) -> Self {
        PinSet {
            policy,
            peers: Vec::new(),
            host_views: Vec::new(),
            by_host: Map::default(),
            by_server_name: Map::default(),
            by_pin: Map::default(),
            warnings: Vec::new(),
            source: bytes::Bytes::new(),
            hash: std::sync::OnceLock::new(),
            sections: None,
            generation: 0,
        }
    }

    /// Reads and validates a pin file.
    pub fn load(path: &Path) -> Result<Self, PinFileError> {
        let text = std::fs::read(path).map_err(|e| PinFileError {
            path: Some(path.display().to_string()),
            errors: vec![Diagnostic {
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read the pin file: {e}"),
            }],
        })?;
        Self::parse_bytes(&text).map_err(|mut e| {
            e.path = Some(path.display().to_string());
            e
        })
    }

    /// Validates pin-file bytes (must be UTF-8 TOML).
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, PinFileError> {
        Self::parse_source(bytes::Bytes::copy_from_slice(bytes))
    }

    /// [`PinSet::parse_bytes`] of bytes the set keeps as its source (the
    /// store's read of the file, not copied).
    pub(crate) fn parse_source(source: bytes::Bytes) -> Result<Self, PinFileError> {
        Self::parse_source_after(source, None)
    }

    /// [`PinSet::parse_source`] for a reload after `prior`: the sections
    /// of the file whose text `prior` parsed already are not parsed again
    /// (each peer is still checked, and the set built, as on a first load).
    pub(crate) fn parse_source_after(
        source: bytes::Bytes,
        prior: Option<&PinSet>,
    ) -> Result<Self, PinFileError> {
        let bytes = &source[..];
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            PinFileError {
                path: None,
                errors: vec![Diagnostic {
                    line,
                    column: 0,
                    key: String::new(),
                    message: "the pin file is not valid UTF-8".into(),
                }],
            }
        })?;
        Self::parse_text(text, source.clone(), prior)
    }

    /// Validates pin-file text.
    pub fn parse(text: &str) -> Result<Self, PinFileError> {
        Self::parse_text(text, bytes::Bytes::copy_from_slice(text.as_bytes()), None)
    }

    /// [`PinSet::parse`] of `text`, whose bytes are `source`, after `prior`.
    fn parse_text(
        text: &str,
        source: bytes::Bytes,
        prior: Option<&PinSet>,
    ) -> Result<Self, PinFileError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = cores.min(MAX_PIECES);
        let pieces = threads.min(text.len() / PIECE_MIN).max(1);
        Self::parse_text_with(text, source, (pieces, threads), CHECK_PARALLEL_MIN, prior)
    }

    /// [`PinSet::parse`] on up to `threads` threads whatever the text's
    /// size: the text cut into sections, read on that many threads where
    /// it allows, and the peers checked on as many threads. One is this
    /// thread only. (`parse` itself uses up to one per core, at most 4,
    /// and only for a large file: 128 kB or more a thread, 1,000 peers or
    /// more to check.) The result is the same whatever the number, and the
    /// same as [`PinSet::parse_whole`]'s.
    pub fn parse_on_threads(text: &str, threads: usize) -> Result<Self, PinFileError> {
        let threads = threads.max(1);
        Self::parse_text_with(text, bytes::Bytes::new(), (threads, threads), 1, None)
    }

    /// [`PinSet::parse`] with the whole text read by the TOML crate in one
    /// go, never in sections: the reading that decides, which the sections
    /// (and the plain reader, [`super::plain`]) must give. For the tests,
    /// the fuzz checks and the bench's baseline.
    pub fn parse_whole(text: &str) -> Result<Self, PinFileError> {
        Self::parse_text_with(text, bytes::Bytes::new(), (0, 1), 1, None)
    }

    /// [`PinSet::parse_on_threads`] with `threads` of at least 2, reusing
    /// the sections `prior` parsed: what a reload does, for the tests and
    /// the fuzz check that it gives what a first load gives.
    pub fn parse_after_on_threads(
        text: &str,
        prior: &PinSet,
        threads: usize,
    ) -> Result<Self, PinFileError> {
        Self::parse_text_with(
            text,
            bytes::Bytes::new(),
            (threads, threads),
            1,
            Some(prior),
        )
    }

    /// [`PinSet::parse_text`], parsed in sections on up to `pieces`
    /// threads where the text allows (none, and no `prior`: whole), its
    /// peers checked on up to `threads` threads if there are at least
    /// `check_min` of them. The sections `prior` parsed are reused.
    fn parse_text_with(
        text: &str,
        source: bytes::Bytes,
        (pieces, threads): (usize, usize),
        check_min: usize,
        prior: Option<&PinSet>,
    ) -> Result<Self, PinFileError> {
        let lines = LineIndex::new(text);
        let sectioned = if pieces >= 1 || prior.is_some() {
            // The sections keep the file's bytes (the source, or a copy of
            // text that came without one): the bytes the next reload
            // compares its sections with must be the ones parsed here.
            let keep = if source.as_ref() == text.as_bytes() {
                source.clone()
            } else {
                bytes::Bytes::copy_from_slice(text.as_bytes())
            };
            Parsed::in_sections(text, &lines, pieces.max(1), prior, keep, check_min)
        } else {
            None
        };
        let parsed = match sectioned {
            Some(p) => p,
            None => Parsed::whole(text, &lines)?,
        };
        let threads = if parsed.peer_count() >= check_min {
            threads
        } else {
            1
        };
        let reused = parsed.layout.as_ref().is_some_and(|l| l.reused > 0);
        match Self::validate(parsed, &lines, source.clone(), threads) {
            // Taken peers carry no positions for findings about them: a
            // file with errors is parsed and checked afresh, so that every
            // error is what a first load of it says.
            Err(_) if reused => {
                Self::parse_text_with(text, source, (pieces, threads), check_min, None)
            }
            done => done,
        }
    }

    /// Validates typed peer entries (no file text) by the same rules as
    /// [`PinSet::parse`]: the set `pinctl add` checks a candidate entry
    /// against before it is written. Diagnostics carry the entry's key
    /// (`peer[0].pins[1]`) but no line, as there is no file.
    pub fn from_entries(policy: Policy, entries: &[PeerEntry]) -> Result<Self, PinFileError> {
        let mut dups = Vec::new();
        let mut peer = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let (raw, dup_hosts) = e.to_raw();
            for h in dup_hosts {
                dups.push(Diagnostic {
                    line: 0,
                    column: 0,
                    key: format!("peer[{i}].host_pins.\"{h}\""),
                    message: format!("host \"{h}\" is listed twice in host_pins"),
                });
            }
            peer.push(Spanned::new(0..0, raw));
        }
        let parsed = Parsed {
            version: Some(Spanned::new(0..0, 1)),
            policy: Some(RawPolicy {
                unpinned: Some(policy.unpinned),
                on_expired: Some(policy.on_expired),
            }),
            groups: vec![Group::Parsed {
                base: 0,
                peers: peer,
            }],
            layout: None,
        };
        match Self::validate(parsed, &LineIndex::unlocated(), bytes::Bytes::new(), 1) {
            Ok(set) if dups.is_empty() => Ok(set),
            Ok(_) => Err(PinFileError {
                path: None,
                errors: dups,
            }),
            Err(mut e) => {
                e.errors.extend(dups);
                Err(e)
            }
        }
    }

    /// The checks shared by [`PinSet::parse`] and [`PinSet::from_entries`].
    /// Peers are checked on up to `threads` threads, then put together in
    /// file order on this one.
    fn validate(
        parsed: Parsed,
        lines: &LineIndex,
        source: bytes::Bytes,
        threads: usize,
    ) -> Result<Self, PinFileError> {
        let peers = parsed.peer_count();
        let mut b = Builder::new(lines, peers);
        b.version(parsed.version.as_ref());
        let policy = parsed
            .policy
            .map(|p| Policy {
                unpinned: p.unpinned.unwrap_or(UnpinnedPolicy::Webpki),
                on_expired: p.on_expired.unwrap_or(ExpiredPolicy::Webpki),
            })
            .unwrap_or_default();
        let sizes: Vec<usize> = parsed.groups.iter().map(Group::len).collect();
        // Sections checked where they were read need no other thread.
        let checked_all = parsed.groups.iter().all(|g| matches!(g, Group::Checked(_)));
        let threads = if checked_all { 1 } else { threads };
        let per = peers.div_ceil(threads.max(1));
        // Each thread checks a run of groups, and drops the raw peers it
        // checked there (the reused ones are copied there).
        let runs = Group::runs(parsed.groups, per);
        let checked = super::pieces::on_threads(runs, |(start, groups)| {
            let mut done = Vec::with_capacity(per);
            for group in groups {
                match group {
                    Group::Parsed { base, peers } => {
                        for raw in peers {
                            done.push(PeerCheck::run(lines, base, start + done.len(), &raw));
                        }
                    }
                    Group::Reused { peer, line } => {
                        done.push(Checked::reused(start + done.len(), peer, line));
                    }
                    Group::Checked(checked) => done.push(*checked),
                }
            }
            done
        })
        .ok_or_else(|| PinFileError {
            path: None,
            errors: vec![Diagnostic {
                line: 0,
                column: 0,
                key: String::new(),
                message: "internal error: a peer check gave no result; the file was not loaded"
                    .into(),
            }],
        })?;
        // What each section gave, for the next reload: its one peer, when
        // the check of it had nothing to say.
        let mut takeable = Vec::with_capacity(sizes.len());
        let mut each = checked.iter().flatten();
        for n in sizes {
            let first = if n > 0 { each.next() } else { None };
            let quiet = first.filter(|c| n == 1 && c.is_quiet());
            takeable.push(quiet.map(|c| c.i));
            for _ in 1..n {
                each.next();
            }
        }
        for c in checked.into_iter().flatten() {
            b.add(c);
        }
        let mut set = b.finish(policy, source)?;
        set.sections = parsed.layout.map(|l| {
            let entries = takeable
                .into_iter()
                .zip(&l.start_lines)
                .map(|(peer, line)| {
                    peer.map(|peer| SectionPeer {
                        peer,
                        start_line: *line,
                    })
                })
                .collect();
            Arc::new(ParsedSections::new(
                l.keep, l.ranges, &l.hashes, entries, l.reused,
            ))
        });
        Ok(set)
    }

    /// The peer entry that covers this TLS name (normalised first), with the
    /// pins that apply to it: for a `host_pins` host, a record of the peer
    /// whose `pins` are that host's and whose `hosts` is that host. O(1).
    pub fn lookup(&self, tls_name: &str) -> Option<&Peer> {
        let key = normalize_lookup(tls_name);
        self.by_host.get(key.as_ref()).and_then(|s| self.slot(*s))
    }

    fn slot(&self, s: Slot) -> Option<&Peer> {
        match s {
            Slot::Main(i) => self.peers.get(i),
            Slot::Host(i) => self.host_views.get(i),
        }
    }

    /// The peer with this Matrix server name (case-insensitive).
    pub fn by_server_name(&self, server_name: &str) -> Option<&Peer> {
        self.by_server_name
            .get(&server_name.to_ascii_lowercase())
            .and_then(|i| self.peers.get(*i))
    }

    /// The peer records that list this pin (a `host_pins` pin yields the
    /// record of its host, as [`PinSet::lookup`] does). O(1).
    pub fn peers_with_pin(&self, pin: &Pin) -> impl Iterator<Item = &Peer> {
        self.by_pin
            .get(pin)
            .into_iter()
            .flat_map(|s| std::iter::once(&s.first).chain(&s.more))
            .filter_map(|s| self.slot(*s))
    }

    /// Every peer, in file order.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether the set has no peers.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// For a file parsed in sections (a large one): how many `[[peer]]`
    /// sections it has, and how many of them this parse took unchanged
    /// from the set before it instead of parsing them.
    pub fn sections_reused(&self) -> Option<(usize, usize)> {
        self.sections.as_ref().map(|s| s.counts())
    }

    /// SHA-256 of the file the set was loaded from.
    pub fn content_hash(&self) -> [u8; 32] {
        *self.hash.get_or_init(|| sha256(&self.source))
    }

    /// Whether `bytes` are exactly the file this set was loaded from.
    pub fn loaded_from(&self, bytes: &[u8]) -> bool {
        self.generation != 0 && self.source == bytes
    }

    /// The content hash as lowercase hex.
    pub fn content_hash_hex(&self) -> String {
        self.content_hash()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// What a pin-file parse gave, comparable (the fuzz check and the tests
/// that pieces and whole agree): the policy, peers, warnings and
/// the lookup of every host, or every error with its line and key.
pub(crate) fn parse_outcome(r: Result<PinSet, PinFileError>) -> String {
    match r {
        Ok(set) => {
            let lookups: Vec<_> = set
                .peers()
                .iter()
                .flat_map(|p| p.hosts.iter().chain(p.host_pins.iter().map(|(h, _)| h)))
                .map(|h| set.lookup(h).map(|p| (&p.server_name, &p.pins)))
                .collect();
            format!(
                "ok {:?}\n{:?}\n{lookups:?}\n{:?}",
                set.policy,
                set.peers(),
                set.warnings
            )
        }
        Err(e) => format!("error {e}"),
    }
}

/// Where a TLS name's pins live: a file entry, or one of its `host_pins`.
type Span = std::ops::Range<usize>;

/// Puts a pin file's checked peers together, in file order: adds the
/// findings of their own checks ([`PeerCheck`]), checks what only the
/// whole file can tell (a server name or host listed twice), and builds the
/// lookup indexes of the [`PinSet`] it becomes.
struct Builder<'l> {
    lines: &'l LineIndex,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    peers: Vec<Peer>,
    /// One record per `host_pins` host: the peer with that host's pins.
    host_views: Vec<Peer>,
    by_host: Map<String, Slot>,
    by_server_name: Map<String, usize>,
}

impl<'l> Builder<'l> {
    fn new(lines: &'l LineIndex, n_peers: usize) -> Self {
        // Sized up front: a 10,000-peer file would otherwise rehash each
        // index a dozen times on every reload.
        Builder {
            lines,
            errors: Vec::new(),
            warnings: Vec::new(),
            peers: Vec::with_capacity(n_peers),
            host_views: Vec::new(),
            by_host: Map::with_capacity_and_hasher(n_peers + n_peers / 2, Default::default()),
            by_server_name: Map::with_capacity_and_hasher(n_peers, Default::default()),
        }
    }

    fn err(&mut self, span: Span, key: String, message: String) {
        let (line, column) = self.lines.locate(span.start);
        self.errors.push(Diagnostic {
            line,
            column,
            key,
            message,
        });
    }

    /// `version = 1` must be there: a later format must not be read as this one.
    fn version(&mut self, version: Option<&Spanned<i64>>) {
        match version {
            None => self.err(
                0..0,
                "version".into(),
                "missing `version = 1` at the top of the file".into(),
            ),
            Some(v) if *v.get_ref() != 1 => self.err(
                v.span(),
                "version".into(),
                format!(
                    "unsupported version {} (this fedpin reads version 1)",
                    v.get_ref()
                ),
            ),
            _ => {}
        }
    }

    /// Adds a checked peer: its findings in the order its check made them,
    /// each claim on a name checked against the peers before it; then
    /// indexes it.
    fn add(&mut self, c: Checked) {
        for step in c.steps {
            match step {
                Step::Error(d) => self.errors.push(d),
                Step::Warning(d) => self.warnings.push(d),
                Step::ServerName((line, column)) => {
                    if let Some(prev) = self.by_server_name.get(&c.sn_key) {
                        let prev_line = self.peers.get(*prev).map(|p| p.line).unwrap_or_default();
                        self.errors.push(Diagnostic {
                            line,
                            column,
                            key: format!("peer[{}].server_name", c.i),
                            message: format!(
                                "server name \"{}\" is already listed at line {prev_line}",
                                c.peer.server_name
                            ),
                        });
                    }
                }
                Step::Host { host, at, key } => {
                    // One host belongs to one entry: a second entry for it
                    // would make the lookup depend on file order.
                    if let Some(prev) = self.by_host.get(&host) {
                        let prev_line = slot_line(&self.peers, &self.host_views, *prev);
                        self.errors.push(Diagnostic {
                            line: at.0,
                            column: at.1,
                            key: key.unwrap_or_else(|| format!("peer[{}].hosts", c.i)),
                            message: format!(
                                "host \"{host}\" is already listed under the peer at line {prev_line}"
                            ),
                        });
                    }
                }
            }
        }
        self.insert(c.sn_key, c.peer);
    }

    /// Indexes a peer by server name and hosts (the first entry wins; a
    /// clash is already an error) and adds a view per `host_pins` host.
    fn insert(&mut self, sn_key: String, peer: Peer) {
        let idx = self.peers.len();
        self.by_server_name.entry(sn_key).or_insert(idx);
        for h in &peer.hosts {
            self.by_host.entry(h.clone()).or_insert(Slot::Main(idx));
        }
        for (h, these) in &peer.host_pins {
            self.by_host
                .entry(h.clone())
                .or_insert(Slot::Host(self.host_views.len()));
            self.host_views.push(Peer {
                hosts: vec![h.clone()],
                pins: these.clone(),
                host_pins: Vec::new(),
                ..peer.clone()
            });
        }
        self.peers.push(peer);
    }

    /// The set, or every error found, sorted by position.
    fn finish(mut self, policy: Policy, source: bytes::Bytes) -> Result<PinSet, PinFileError> {
        if !self.errors.is_empty() {
            self.errors.sort_by_key(|d| (d.line, d.column));
            return Err(PinFileError {
                path: None,
                errors: self.errors,
            });
        }
        let mut by_pin: Map<Pin, Slots> =
            Map::with_capacity_and_hasher(2 * self.peers.len(), Default::default());
        let mut add = |pin: Pin, slot: Slot| {
            by_pin
                .entry(pin)
                .and_modify(|s| s.more.push(slot))
                .or_insert(Slots {
                    first: slot,
                    more: Vec::new(),
                });
        };
        for (i, p) in self.peers.iter().enumerate() {
            for pin in &p.pins {
                add(*pin, Slot::Main(i));
            }
        }
        for (i, p) in self.host_views.iter().enumerate() {
            for pin in &p.pins {
                add(*pin, Slot::Host(i));
            }
        }
        Ok(PinSet {
            policy,
            peers: self.peers,
            host_views: self.host_views,
            by_host: self.by_host,
            by_server_name: self.by_server_name,
            by_pin,
            warnings: self.warnings,
            source,
            hash: std::sync::OnceLock::new(),
            sections: None,
            generation: 0,
        })
    }
}

/// One `[[peer]]` table checked on its own, as far as it can be without
/// the rest of the file; [`Builder::add`] does the rest, in file order.
/// Peers are checked on several threads in a large file.
struct Checked {
    /// The peer's index in the file.
    i: usize,
    /// Its server name, lowercased (the index key).
    sn_key: String,
    peer: Peer,
    /// Findings and claims, in the order the checks made them.
    steps: Vec<Step>,
}

impl Checked {
    /// `peer[i]` as taken from the set before (a copy, its header now on
    /// `line`), its section unchanged: the check of it then had nothing to
    /// report, so it has only its claims (positions unknown; a file with
    /// an error is checked afresh).
    fn reused(i: usize, peer: &Peer, line: usize) -> Checked {
        let peer = Peer {
            line,
            ..peer.clone()
        };
        let mut steps = Vec::with_capacity(1 + peer.hosts.len() + peer.host_pins.len());
        steps.push(Step::ServerName((0, 0)));
        for h in &peer.hosts {
            steps.push(Step::Host {
                host: h.clone(),
                at: (0, 0),
                key: None,
            });
        }
        for (h, _) in &peer.host_pins {
            steps.push(Step::Host {
                host: h.clone(),
                at: (0, 0),
                key: Some(format!("peer[{i}].host_pins.\"{h}\"")),
            });
        }
        Checked {
            i,
            sn_key: peer.server_name.to_ascii_lowercase(),
            peer,
            steps,
        }
    }

    /// Whether the check found nothing to report (claims only).
    fn is_quiet(&self) -> bool {
        self.steps
            .iter()
            .all(|s| matches!(s, Step::ServerName(_) | Step::Host { .. }))
    }
}

/// A finding of a peer's own check, or a claim on a name that an earlier
/// peer might hold already. Positions are (line, column).
enum Step {
    Error(Diagnostic),
    Warning(Diagnostic),
    /// The server name is this peer's alone.
    ServerName((usize, usize)),
    /// The host is this peer's alone; `key` is the key to name in an error
    /// (`None`: `peer[i].hosts`, formatted only for an error).
    Host {
        host: String,
        at: (usize, usize),
        key: Option<String>,
    },
}

/// The checks of one peer ([`Checked`]).
struct PeerCheck<'l> {
    lines: &'l LineIndex,
    /// Where the peer's spans count from (the start of its piece, [`Parsed`]).
    base: usize,
    steps: Vec<Step>,
}

impl<'l> PeerCheck<'l> {
    fn err(&mut self, span: Span, key: String, message: String) {
        let (line, column) = self.lines.locate(self.base + span.start);
        self.steps.push(Step::Error(Diagnostic {
            line,
            column,
            key,
            message,
        }));
    }

    fn warn(&mut self, at: usize, key: String, message: String) {
        let (line, column) = self.lines.locate(self.base + at);
        self.steps.push(Step::Warning(Diagnostic {
            line,
            column,
            key,
            message,
        }));
    }

    /// A host this peer claims, at `at` in its span.
    fn claim(&mut self, host: String, at: usize, key: Option<String>) {
        let at = self.lines.locate(self.base + at);
        self.steps.push(Step::Host { host, at, key });
    }

    /// Checks `peer[i]`, whose spans count from `base`, on its own.
    fn run(lines: &'l LineIndex, base: usize, i: usize, raw_peer: &Spanned<RawPeer>) -> Checked {
        let mut this = PeerCheck {
            lines,
            base,
            // A server name and a host or two.
            steps: Vec::with_capacity(4),
        };
        let (sn_key, peer) = this.peer(i, raw_peer);
        Checked {
            i,
            sn_key,
            peer,
            steps: this.steps,
        }
    }

    /// The checks of one `[[peer]]` table; its server name's key and the
    /// peer it becomes.
    fn peer(&mut self, i: usize, raw_peer: &Spanned<RawPeer>) -> (String, Peer) {
        let peer_span = raw_peer.span();
        let rp = raw_peer.get_ref();
        let key = |k: &str| format!("peer[{i}].{k}");
        let sn_span = rp.server_name.span();
        let server_name = rp.server_name.get_ref().clone();
        let default_host = match split_server_name(&server_name) {
            Ok(host) => Some(host),
            Err(msg) => {
                self.err(sn_span.clone(), key("server_name"), msg);
                None
            }
        };
        let sn_key = server_name.to_ascii_lowercase();
        self.steps.push(Step::ServerName(
            self.lines.locate(self.base + sn_span.start),
        ));
        let hosts = self.hosts(i, peer_span, rp.hosts.as_deref(), &default_host, &sn_span);
        let line = self.lines.locate(self.base + sn_span.start).0;
        if let Some(own) = &default_host {
            self.warn_own_host_missing(i, own, &hosts, rp.host_pins.as_ref(), sn_span.start);
        }
        for (h, span) in &hosts {
            self.claim(h.clone(), span.start, None);
        }
        let pins = self.pins(i, &rp.pins, &server_name);
        let expires = self.expires(i, rp.expires.as_ref());
        let delegation = self.delegation(i, rp.delegation.as_ref());
        let signing_keys = self.signing_keys(i, rp.signing_keys.as_deref().unwrap_or_default());
        let host_pins = match &rp.host_pins {
            Some(map) => self.host_pins(i, map, &hosts),
            None => Vec::new(),
        };
        if let (Some(d), Some(own)) = (&delegation, &default_host) {
            let covered = |h: &str| {
                hosts.iter().any(|(x, _)| x == h) || host_pins.iter().any(|(x, _)| x == h)
            };
            let uncovered: Vec<(String, &str)> = [
                (own.clone(), "the well-known front (the server name's own host, which answers /.well-known/matrix/server)"),
                (split_server_name(d).unwrap_or_default(), "the delegated federation endpoint"),
            ]
            .into_iter()
            .filter(|(h, _)| !covered(h))
            .collect();
            for (h, what) in uncovered {
                self.warn(
                    sn_span.start,
                    key("delegation"),
                    format!(
                        "\"{h}\" is {what} of \"{server_name}\" (delegation = \"{d}\") but no pin covers it: an impostor with a CA-valid certificate for it can redirect federation; run `pinctl add {server_name}` again or add it to host_pins"
                    ),
                );
            }
        }
        (
            sn_key,
            Peer {
                server_name,
                hosts: hosts.into_iter().map(|(h, _)| h).collect(),
                pins,
                trust: rp.trust.unwrap_or(Trust::Webpki),
                mode: rp.mode.unwrap_or(Mode::Enforce),
                expires,
                note: rp.note.clone(),
                line,
                delegation,
                host_pins,
                signing_keys,
            },
        )
    }

    /// `hosts`, normalised, each once; the server name's own host when absent.
    fn hosts(
        &mut self,
        i: usize,
        peer_span: Span,
        list: Option<&[Spanned<String>]>,
        default_host: &Option<String>,
        sn_span: &Span,
    ) -> Vec<(String, Span)> {
        let mut hosts: Vec<(String, Span)> = Vec::new();
        let Some(list) = list else {
            if let Some(h) = default_host.clone() {
                hosts.push((h, sn_span.clone()));
            }
            return hosts;
        };
        if list.is_empty() {
            self.err(
                peer_span,
                format!("peer[{i}].hosts"),
                "hosts must not be empty (omit it to use the server name)".into(),
            );
        }
        for (j, h) in list.iter().enumerate() {
            let span = h.span();
            match normalize_tls_name(h.get_ref()) {
                Ok(n) if hosts.iter().any(|(h, _)| *h == n) => self.err(
                    span,
                    format!("peer[{i}].hosts[{j}]"),
                    format!("host \"{n}\" is listed twice"),
                ),
                Ok(n) => hosts.push((n, span)),
                Err(m) => self.err(span, format!("peer[{i}].hosts[{j}]"), m),
            }
        }
        hosts
    }

    /// A `hosts` list that leaves out the server name's own host makes
    /// connections to it unpinned: intended only for a delegating front.
    fn warn_own_host_missing(
        &mut self,
        i: usize,
        own: &str,
        hosts: &[(String, Span)],
        host_pins: Option<&std::collections::BTreeMap<String, Spanned<Vec<Spanned<String>>>>>,
        at: usize,
    ) {
        // A name with its own keys in host_pins is covered too.
        let in_host_pins = host_pins.is_some_and(|m| {
            m.keys()
                .any(|h| normalize_tls_name(h).is_ok_and(|n| n == own))
        });
        if !hosts.is_empty() && !hosts.iter().any(|(h, _)| h == own) && !in_host_pins {
            self.warn(
                at,
                format!("peer[{i}].hosts"),
                format!(
                    "hosts does not include \"{own}\": connections to that name are treated as unpinned (intended only when it delegates via .well-known)"
                ),
            );
        }
    }

    /// `pins`: at least one, each a well-formed `sha256/…`; a single pin
    /// (no backup) is a warning.
    fn pins(
        &mut self,
        i: usize,
        list: &Spanned<Vec<Spanned<String>>>,
        server_name: &str,
    ) -> Vec<Pin> {
        let pins_span = list.span();
        let raw_pins = list.get_ref();
        if raw_pins.is_empty() {
            self.err(
                pins_span.clone(),
                format!("peer[{i}].pins"),
                "a peer needs at least one pin".into(),
            );
        }
        let mut pins = Vec::new();
        for (j, p) in raw_pins.iter().enumerate() {
            match p.get_ref().parse::<Pin>() {
                Ok(pin) if pins.contains(&pin) => self.warn(
                    p.span().start,
                    format!("peer[{i}].pins[{j}]"),
                    format!("pin {pin} is listed twice"),
                ),
                Ok(pin) => pins.push(pin),
                Err(e) => self.err(
                    p.span(),
                    format!("peer[{i}].pins[{j}]"),
                    format!("malformed pin \"{}\": {e}", p.get_ref()),
                ),
            }
        }
        if pins.len() == 1 {
            self.warn(
                pins_span.start,
                format!("peer[{i}].pins"),
                format!(
                    "\"{server_name}\" has a single pin and no backup: its next key rollover will break federation"
                ),
            );
        }
        pins
    }

    /// `expires`: an RFC 3339 date.
    fn expires(&mut self, i: usize, expires: Option<&Spanned<String>>) -> Option<OffsetDateTime> {
        let e = expires?;
        match OffsetDateTime::parse(e.get_ref(), &Rfc3339) {
            Ok(t) => Some(t),
            Err(pe) => {
                self.err(
                    e.span(),
                    format!("peer[{i}].expires"),
                    format!(
                        "malformed date \"{}\" ({pe}); use RFC 3339, e.g. 2027-06-01T00:00:00Z",
                        e.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// `delegation`: a Matrix server name, kept in canonical form.
    fn delegation(&mut self, i: usize, delegation: Option<&Spanned<String>>) -> Option<String> {
        let d = delegation?;
        match d
            .get_ref()
            .parse::<crate::matrix::server_name::ServerName>()
        {
            Ok(n) => Some(n.to_string()),
            Err(e) => {
                self.err(d.span(), format!("peer[{i}].delegation"), e.to_string());
                None
            }
        }
    }

    /// `signing_keys`: `ed25519:KEYID=BASE64` entries, each kept once.
    fn signing_keys(
        &mut self,
        i: usize,
        list: &[Spanned<String>],
    ) -> Vec<crate::matrix::signing::VerifyKey> {
        let key = |j: usize| format!("peer[{i}].signing_keys[{j}]");
        self.distinct(key, "signing key", list, |text| {
            let (id, b64) = text
                .split_once('=')
                .ok_or_else(|| "expected \"ed25519:KEYID=BASE64\"".to_owned())?;
            crate::matrix::signing::VerifyKey::from_base64(id, b64).map_err(|e| e.to_string())
        })
    }

    /// The items of a list, parsed, each distinct value once (a repeat is
    /// dropped); an item that does not parse is an error at its own span and
    /// key (`key(index)`, formatted only then): `malformed WHAT "TEXT": WHY`.
    fn distinct<T: PartialEq>(
        &mut self,
        key: impl Fn(usize) -> String,
        what: &str,
        list: &[Spanned<String>],
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for (j, item) in list.iter().enumerate() {
            match parse(item.get_ref()) {
                Ok(v) if !out.contains(&v) => out.push(v),
                Ok(_) => {}
                Err(m) => self.err(
                    item.span(),
                    key(j),
                    format!("malformed {what} \"{}\": {m}", item.get_ref()),
                ),
            }
        }
        out
    }

    /// `host_pins`: per-host pins for hosts not in `hosts`, each host once
    /// in the whole file, each with at least one well-formed pin.
    fn host_pins(
        &mut self,
        i: usize,
        map: &std::collections::BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
        hosts: &[(String, Span)],
    ) -> Vec<(String, Vec<Pin>)> {
        let mut host_pins: Vec<(String, Vec<Pin>)> = Vec::new();
        for (h, list) in map {
            let span = list.span();
            let hkey = format!("peer[{i}].host_pins.\"{h}\"");
            let name = match normalize_tls_name(h) {
                Ok(n) => n,
                Err(m) => {
                    self.err(span, hkey, m);
                    continue;
                }
            };
            if hosts.iter().any(|(x, _)| *x == name) || host_pins.iter().any(|(x, _)| *x == name) {
                self.err(
                    span.clone(),
                    hkey.clone(),
                    format!("host \"{name}\" is listed twice in this peer (hosts and host_pins name each host once)"),
                );
                continue;
            }
            self.claim(name.clone(), span.start, Some(hkey.clone()));
            let raw = list.get_ref();
            if raw.is_empty() {
                self.err(span, hkey.clone(), "a host needs at least one pin".into());
            }
            let key = |j: usize| format!("{hkey}[{j}]");
            let these = self.distinct(key, "pin", raw, |text| {
                text.parse::<Pin>().map_err(|e| e.to_string())
            });
            host_pins.push((name, these));
        }
        host_pins
    }
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Main(usize),
    Host(usize),
}

/// The entries with one pin: the first inline, so that a pin of one
/// peer alone (nearly every pin) costs no allocation of its own.
#[derive(Debug, Clone)]
struct Slots {
    first: Slot,
    more: Vec<Slot>,
}

fn slot_line(peers: &[Peer], views: &[Peer], s: Slot) -> usize {
    match s {
        Slot::Main(i) => peers.get(i),
        Slot::Host(i) => views.get(i),
    }
    .map(|p| p.line)
    .unwrap_or_default()
}

/// SHA-256 of `bytes` (the pin set's content hash).
fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut h = [0u8; 32];
    h.copy_from_slice(d.as_ref());
    h
}

/// Normalises a lookup key: lowercase, trailing dot removed, IPv6 brackets removed.
/// Borrows when the name is already normal, so the hot path does not allocate.
pub fn normalize_lookup(name: &str) -> std::borrow::Cow<'_, str> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let trimmed = trimmed
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(trimmed);
    if trimmed.contains(':') || trimmed.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        if let Ok(ip) = trimmed.parse::<IpAddr>() {
            let canonical = ip.to_string();
            if canonical != trimmed {
                return std::borrow::Cow::Owned(canonical);
            }
            return std::borrow::Cow::Borrowed(trimmed);
        }
    }
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(trimmed)
    }
}

/// Validates and normalises a TLS name from the file (a DNS name or an IP literal).
pub fn normalize_tls_name(name: &str) -> Result<String, String> {
    let n = normalize_lookup(name.trim()).into_owned();
    if n.is_empty() {
        return Err("host name is empty".into());
    }
    if n.ends_with('.') {
        // "a.example.." would keep a dot after normalising and never match
        // the TLS name, leaving the peer silently unpinned.
        return Err(format!("host \"{name}\" ends with more than one dot"));
    }
    if let Ok(ip) = n.parse::<IpAddr>() {
        // Canonical text, as the verifier looks IP peers up (e.g. "::1", not "0:0:0:0:0:0:0:1").
        return Ok(ip.to_string());
    }
    if n.contains(':') {
        return Err(format!(
            "host \"{name}\" must be a TLS name without a port (put ports in server_name)"
        ));
    }
    match rustls_pki_types::DnsName::try_from(n.as_str()) {
        Ok(_) => Ok(n),
        Err(_) => Err(format!(
            "host \"{name}\" is not a valid DNS name or IP address"
        )),
    }
}

/// Splits a Matrix server name (`host[:port]`, `[v6]:port`) and returns the
/// normalised host part, or a sentence saying what is wrong.
pub fn split_server_name(server_name: &str) -> Result<String, String> {
    if server_name.is_empty() {
        return Err("server name is empty".into());
    }
    let (host, port) = if let Some(rest) = server_name.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Err(format!("server name \"{server_name}\" has an unclosed '['"));
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "server name \"{server_name}\" has an invalid IPv6 literal"
            ));
        }
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(format!("server name \"{server_name}\" has junk after ']'")),
            },
        };
        (v6.to_string(), port)
    } else {
        match server_name.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(format!(
                    "server name \"{server_name}\": an IPv6 literal must be in brackets, e.g. \"[2001:db8::1]:8448\""
                ))
            }
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (server_name.to_string(), None),
        }
    };
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => {
                return Err(format!(
                    "server name \"{server_name}\" has an invalid port \"{p}\""
                ))
            }
        }
    }
    normalize_tls_name(&host).map_err(|m| format!("server name \"{server_name}\": {m}"))
}

/// Maps byte offsets to 1-based (line, column); (0, 0) for typed entries,
/// which have no text.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = Vec::with_capacity(text.len() / 16 + 1);
        starts.push(0);
        starts.extend(memchr::memchr_iter(b'\n', text.as_bytes()).map(|i| i + 1));
        LineIndex { starts }
    }

    /// The index of no text: every location is (0, 0), "unknown".
    fn unlocated() -> Self {
        LineIndex { starts: Vec::new() }
    }

    fn locate(&self, offset: usize) -> (usize, usize) {
        if self.starts.is_empty() {
            return (0, 0);
        }
        let line = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let col = offset - self.starts.get(line).copied().unwrap_or(0);
        (line + 1, col + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(n: u8) -> String {
        Pin::of_spki(&[n]).to_string()
    }

    #[test]
    fn parses_example() {
        let text = format!(
            r#"version = 1
[policy]
unpinned = "deny"
on_expired = "webpki"

[[peer]]
server_name = "Matrix.org"
hosts = ["matrix.org", "matrix-federation.matrix.org."]
pins = ["{}", "{}"]
trust = "webpki"
mode = "report"
expires = "2027-06-01T00:00:00Z"
note = "x"

[[peer]]
server_name = "[0:0:0:0:0:0:0:1]:8448"
pins = ["{}"]
trust = "pin-only"
"#,
            pin(1),
            pin(2),
            pin(3)
        );
        let set = PinSet::parse(&text).unwrap();
        assert_eq!(set.policy.unpinned, UnpinnedPolicy::Deny);
        assert_eq!(set.len(), 2);
        let p = set.lookup("MATRIX-federation.matrix.org.").unwrap();
        assert_eq!(p.server_name, "Matrix.org");
        assert_eq!(p.mode, Mode::Report);
        assert!(set.lookup("::1").is_some());
        assert!(set.lookup("[::1]").is_some());
        assert_eq!(set.lookup("::1").unwrap().trust, Trust::PinOnly);
        assert!(set.lookup("example.org").is_none());
        assert_eq!(set.warnings.len(), 1, "{:?}", set.warnings);
        assert_eq!(set.warnings[0].line, 17);
        assert!(
            set.lookup("0:0:0:0:0:0:0:1").is_some(),
            "IP lookups are canonical"
        );
    }

    #[test]
    fn duplicate_host_names_both_lines() {
        let text = format!(
            "version = 1\n[[peer]]\nserver_name = \"a.example\"\npins = [\"{}\"]\n[[peer]]\nserver_name = \"b.example\"\nhosts = [\"a.example\"]\npins = [\"{}\"]\n",
            pin(1),
            pin(2)
        );
        let e = PinSet::parse(&text).unwrap_err();
        assert_eq!(e.errors.len(), 1);
        assert_eq!(e.errors[0].line, 7);
        assert!(e.errors[0].message.contains("line 3"), "{}", e);
    }

    #[test]
    fn errors_name_line_and_key() {
        let text = "version = 1\n[[peer]]\nserver_name = \"a.example\"\npins = [\"sha256/nope\"]\nexpires = \"tomorrow\"\n";
        let e = PinSet::parse(text).unwrap_err();
        assert_eq!(e.errors.len(), 2, "{e}");
        assert_eq!(
            (e.errors[0].line, e.errors[0].key.as_str()),
            (4, "peer[0].pins[0]")
        );
        assert_eq!(
            (e.errors[1].line, e.errors[1].key.as_str()),
            (5, "peer[0].expires")
        );
    }

    #[test]
    fn unknown_key_is_an_error_with_line() {
        let text = format!(
            "version = 1\n[[peer]]\nserver_name = \"a.example\"\npins = [\"{}\"]\npin = 3\n",
            pin(1)
        );
        let e = PinSet::parse(&text).unwrap_err();
        assert_eq!(e.errors[0].line, 5, "{e}");
        assert!(e.errors[0].message.contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_enum_and_version() {
        assert!(PinSet::parse("version = 2\n").is_err());
        assert!(PinSet::parse("").is_err());
        let e = PinSet::parse("version = 1\n[policy]\nunpinned = \"allow\"\n").unwrap_err();
        assert_eq!(e.errors[0].line, 3, "{e}");
    }

    #[test]
    fn typed_entries_pass_the_parser_rules() {
        let entry = |name: &str, pins: Vec<Pin>| PeerEntry {
            server_name: name.into(),
            pins,
            ..PeerEntry::default()
        };
        let ok = PinSet::from_entries(
            Policy::default(),
            &[PeerEntry {
                hosts: Some(vec!["Fed.A.Example.".into()]),
                host_pins: vec![("a.example".into(), vec![Pin::of_spki(&[9])])],
                delegation: Some("fed.a.example:443".into()),
                ..entry("a.example", vec![Pin::of_spki(&[1]), Pin::of_spki(&[2])])
            }],
        )
        .unwrap();
        assert_eq!(ok.lookup("fed.a.example").unwrap().pins.len(), 2);
        assert_eq!(ok.lookup("a.example").unwrap().pins, [Pin::of_spki(&[9])]);
        // The parser's warnings too: none here, the server name's own host
        // has keys of its own in host_pins.
        assert!(ok.warnings.is_empty(), "{:?}", ok.warnings);

        let e = PinSet::from_entries(
            Policy::default(),
            &[
                entry("a.example", vec![Pin::of_spki(&[1])]),
                entry("b.example", Vec::new()),
                PeerEntry {
                    hosts: Some(vec!["a.example".into()]),
                    expires: Some("tomorrow".into()),
                    signing_keys: vec!["nonsense".into()],
                    host_pins: vec![
                        ("x.example".into(), vec![Pin::of_spki(&[3])]),
                        ("x.example".into(), vec![Pin::of_spki(&[4])]),
                    ],
                    ..entry("c.example", vec![Pin::of_spki(&[2])])
                },
            ],
        )
        .unwrap_err();
        let keys: Vec<&str> = e.errors.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "peer[1].pins",
                "peer[2].hosts",
                "peer[2].expires",
                "peer[2].signing_keys[0]",
                "peer[2].host_pins.\"x.example\"",
            ],
            "{e}"
        );
        assert!(e.errors.iter().all(|d| d.line == 0), "{e}");
        assert!(
            e.to_string()
                .contains("<pin file>: peer[1].pins: a peer needs at least one pin"),
            "{e}"
        );
    }

    #[test]
    fn server_name_forms() {
        assert_eq!(
            split_server_name("Example.ORG:8448").unwrap(),
            "example.org"
        );
        assert_eq!(split_server_name("1.2.3.4").unwrap(), "1.2.3.4");
        assert_eq!(
            split_server_name("[2001:db8::1]:443").unwrap(),
            "2001:db8::1"
        );
        assert!(split_server_name("a.example:0").is_err());
        assert!(split_server_name("a.example:99999").is_err());
        assert!(split_server_name("a b").is_err());
        assert!(split_server_name("[::1").is_err());
        assert!(split_server_name("").is_err());
        assert!(split_server_name("2001:db8::1:8448").is_err());
        assert!(split_server_name("a.example..").is_err());
        assert!(normalize_tls_name("a.example..").is_err());
        assert_eq!(normalize_tls_name("A.Example.").unwrap(), "a.example");
    }

    #[test]
    fn a_server_name_pinned_in_host_pins_is_not_reported_missing_from_hosts() {
        let pin = format!("sha256/{}", "A".repeat(43) + "=");
        let with = format!(
            "version = 1\n[[peer]]\nserver_name = \"a.example\"\nhosts = [\"fed.a.example\"]\npins = [\"{pin}\"]\ndelegation = \"fed.a.example:443\"\nhost_pins = {{ \"a.example\" = [\"{pin}\"] }}\n"
        );
        let set = PinSet::parse(&with).unwrap();
        assert!(
            !set.warnings
                .iter()
                .any(|w| w.message.contains("hosts does not include")),
            "{:?}",
            set.warnings
        );
        let without = format!(
            "version = 1\n[[peer]]\nserver_name = \"a.example\"\nhosts = [\"fed.a.example\"]\npins = [\"{pin}\"]\n"
        );
        let set = PinSet::parse(&without).unwrap();
        assert!(
            set.warnings
                .iter()
                .any(|w| w.message.contains("hosts does not include")),
            "{:?}",
            set.warnings
        );
    }

    use super::parse_outcome as outcome;

    /// `n` peers, each with a few of the fields a real file has.
    fn many_peers(n: usize, eol: &str, tricky_notes: bool) -> String {
        let mut s = format!("version = 1{eol}{eol}[policy]{eol}unpinned = \"deny\"{eol}");
        for i in 0..n {
            s.push_str(&format!(
                "{eol}[[peer]]{eol}server_name = \"p{i}.test\"{eol}pins = [\"{}\", \"{}\"]{eol}",
                pin(i as u8),
                pin(i as u8 ^ 0x80)
            ));
            if i % 3 == 0 {
                s.push_str(&format!("hosts = [\"p{i}.test\", \"fed.p{i}.test\"]{eol}"));
            }
            if tricky_notes && i % 4 == 1 {
                s.push_str(&format!(
                    "note = \"\"\"{eol}[[peer]]{eol}not a header\"\"\"{eol}"
                ));
            }
            if i % 5 == 2 {
                s.push_str(&format!(
                    "[peer.host_pins]{eol}\"wk.p{i}.test\" = [\"{}\"]{eol}",
                    pin(200)
                ));
            }
        }
        s
    }

    /// The texts of the pieces-vs-whole test, with whether the pieces are
    /// used (always, never, or it depends on where the cuts fall).
    fn piece_cases() -> Vec<(String, Option<bool>)> {
        let good = many_peers(40, "\n", false);
        let late = |from: &str, to: &str| {
            let at = good.rfind(from).expect("pattern in the late part");
            format!("{}{}", &good[..at], good[at..].replacen(from, to, 1))
        };
        // (text, whether the pieces are used: always, never, or it depends
        // on where the cuts fall)
        vec![
            (good.clone(), Some(true)),
            (many_peers(40, "\r\n", false), Some(true)),
            // Notes with a `[[peer]]` line inside a string: a cut there
            // leaves its section unterminated, so the whole is parsed.
            (many_peers(40, "\n", true), Some(false)),
            // Validation errors in the last piece: same lines.
            (
                late("pins = [\"", "pins = [\"sha256/short\", \""),
                Some(true),
            ),
            (
                late("server_name = \"p39.test\"", "server_name = \"p2.test\""),
                Some(true),
            ),
            (late("\"fed.p39.test\"", "\"p0.test\""), Some(true)),
            // Two errors at one place (a host_pins host taken, with no pins):
            // the order of the one check.
            (
                {
                    let at = good.find("\"wk.p37.test\"").unwrap();
                    let end = at + good[at..].find('\n').unwrap();
                    format!("{}\"p0.test\" = []{}", &good[..at], &good[end..])
                },
                Some(true),
            ),
            // `[policy]` after the peers: fine for TOML, but only the whole knows.
            (
                format!(
                    "version = 1\n{}\n[policy]\nunpinned = \"deny\"\n",
                    &good[good.find("[[peer]]").unwrap()..]
                ),
                Some(false),
            ),
            // `[policy]` twice: a TOML error the pieces alone would not see.
            (
                format!("{good}\n[policy]\non_expired = \"deny\"\n"),
                Some(false),
            ),
            // `peer` given as an inline array in the head: the later headers
            // cannot extend it.
            (
                good.replacen(
                    "[policy]",
                    &format!(
                        "peer = [{{ server_name = \"x.test\", pins = [\"{}\"] }}]\n[policy]",
                        pin(1)
                    ),
                    1,
                ),
                Some(false),
            ),
            // The first header line inside a head string.
            (
                good.replacen(
                    "version = 1",
                    "version = 1\nx = \"\"\"\n[[peer]]\n\"\"\"",
                    1,
                ),
                Some(false),
            ),
            // A TOML error in a late piece, and an unknown table.
            (
                late("server_name = \"p38.test\"", "server_name = \"p38.test"),
                Some(false),
            ),
            (format!("{good}\n[extra]\na = 1\n"), Some(false)),
            // A BOM: the first piece's spans and a later piece's (base +
            // span) must still give the same lines.
            (
                format!(
                    "\u{feff}{}",
                    late("pins = [\"", "pins = [\"sha256/short\", \"")
                ),
                Some(true),
            ),
            // Errors at a peer's own span (hosts = []), comment and blank
            // lines before every header.
            (
                good.replace("\n[[peer]]\n", "\n# [[peer]]\n\n[[peer]]\n")
                    .replace("hosts = [\"p", "hosts = [] # \"p"),
                Some(true),
            ),
            // A TOML 1.1 inline table over several lines, late, with an error.
            (
                late(
                    "pins = [\"",
                    "host_pins = {\n\"nl.test\" = [\"sha256/short\"],\n}\npins = [\"",
                ),
                Some(true),
            ),
            // Fake peers (and a [policy]) in multi-line literal strings.
            (
                many_peers(40, "\n", true).replace("\"\"\"", "'''").replace(
                    "[[peer]]\nnot a header",
                    "[[peer]]\nserver_name = \"evil.test\"\n[policy]\nunpinned = \"webpki\"",
                ),
                Some(false),
            ),
            // An empty [policy] late: still given twice.
            (format!("{good}\n[policy]\n"), Some(false)),
            // A late array of tables under a peer, and a late [peer] table.
            (
                late("pins = [\"", "[[peer.x]]\n[peer.y]\npins = [\""),
                Some(false),
            ),
            (format!("{good}\n[peer]\n"), Some(false)),
        ]
    }

    /// The sections ([`Parsed::in_sections`]) give what the whole text
    /// gives, for files that are fine, wrong in validation (lines must
    /// still be right: spans in a section count from its start) or wrong
    /// in TOML; and where the whole text decides alone (the sections would
    /// read it differently), the sections step aside.
    #[test]
    fn parsing_in_sections_gives_what_parsing_whole_gives() {
        let cases = piece_cases();
        for (k, (text, splits)) in cases.iter().enumerate() {
            let whole = outcome(PinSet::parse_whole(text));
            for pieces in 1..=5 {
                if let Some(splits) = splits {
                    let used = Parsed::in_sections(
                        text,
                        &LineIndex::new(text),
                        pieces,
                        None,
                        bytes::Bytes::new(),
                        1,
                    );
                    assert_eq!(
                        used.is_some(),
                        *splits,
                        "case {k}, {pieces} threads: used the sections?"
                    );
                }
                let split = outcome(PinSet::parse_on_threads(text, pieces));
                assert_eq!(split, whole, "case {k}, {pieces} threads");
            }
        }
        assert!(outcome(PinSet::parse(&cases[0].0)).starts_with("ok"));
        assert!(outcome(PinSet::parse(&cases[3].0)).contains("malformed pin"));
        let tie = outcome(PinSet::parse(&cases[6].0));
        assert!(
            tie.contains("already listed") && tie.contains("at least one pin"),
            "{tie}"
        );
    }

    /// A reload after a set parsed in sections parses only the sections
    /// whose bytes changed, and gives what a first load of the new text
    /// gives: for every case above (fine, wrong in validation, wrong in
    /// TOML, or read whole), after a prior set of another text and after
    /// one of the same text.
    #[test]
    fn a_reload_reuses_unchanged_sections_and_gives_what_a_first_load_gives() {
        let good = many_peers(40, "\n", false);
        let prior = PinSet::parse_on_threads(&good, 2).expect("good parses");
        assert_eq!(prior.sections_reused(), Some((40, 0)));
        for (k, (text, _)) in piece_cases().iter().enumerate() {
            let whole = outcome(PinSet::parse_whole(text));
            let after = outcome(PinSet::parse_after_on_threads(text, &prior, 2));
            assert_eq!(after, whole, "case {k} after the good file");
            if let Ok(itself) = PinSet::parse_on_threads(text, 2) {
                let again = PinSet::parse_after_on_threads(text, &itself, 3);
                if let (Some((n, 0)), Ok(set)) = (itself.sections_reused(), &again) {
                    assert_eq!(set.sections_reused(), Some((n, n)), "case {k}");
                }
                assert_eq!(outcome(again), whole, "case {k} after itself");
            }
        }
    }

    /// Sections that moved (a peer removed, one added in the middle, CRLF
    /// only in one place) are reused at their new place: lines, indexes
    /// in keys, and diagnostics are those of the new text.
    #[test]
    fn reused_sections_take_their_new_place() {
        let good = many_peers(40, "\n", false);
        let prior = PinSet::parse_on_threads(&good, 2).expect("good parses");
        let start = good.find("[[peer]]").unwrap();
        let second = start + 1 + good[start + 1..].find("[[peer]]").unwrap();
        let added = format!(
            "[[peer]]\nserver_name = \"new.test\"\npins = [\"{}\"]\n\n",
            pin(77)
        );
        let mid = good.find("[[peer]]\nserver_name = \"p20.test\"").unwrap();
        let mid_end = mid + 1 + good[mid + 1..].find("[[peer]]").unwrap();
        let edits = [
            // The first peer removed: every later line moves up.
            (format!("{}{}", &good[..start], &good[second..]), 39, 39),
            // A peer added in the middle (a single pin: a warning, located).
            (format!("{}{added}{}", &good[..mid], &good[mid..]), 41, 40),
            // The same peer again at the end: an error naming both lines.
            (format!("{good}\n{}", &good[mid..mid_end]), 0, 0),
        ];
        for (k, (text, sections, reused)) in edits.iter().enumerate() {
            let whole = outcome(PinSet::parse_whole(text));
            let after = PinSet::parse_after_on_threads(text, &prior, 2);
            if *sections > 0 {
                let set = after.as_ref().expect("parses");
                assert_eq!(
                    set.sections_reused(),
                    Some((*sections, *reused)),
                    "edit {k}"
                );
            }
            assert_eq!(outcome(after), whole, "edit {k}");
        }
        let added_warning = outcome(PinSet::parse_after_on_threads(&edits[1].0, &prior, 2));
        assert!(added_warning.contains("single pin"), "{added_warning}");
        let twice = outcome(PinSet::parse_after_on_threads(&edits[2].0, &prior, 2));
        assert!(twice.contains("already listed at line"), "{twice}");
    }

    /// From the second reload on, the set before was itself built from
    /// taken sections: a chain of reloads (A, then B after A, then A after
    /// that, then B again) gives at each step what a first load gives,
    /// and keeps taking the unchanged sections.
    #[test]
    fn reloads_after_reloads_stay_exact() {
        let a = many_peers(40, "\n", false);
        let first = a.find("[[peer]]").unwrap();
        // B: a peer added at the top (every line moves), one removed late.
        let late = a.find("[[peer]]\nserver_name = \"p30.test\"").unwrap();
        let late_end = late + 1 + a[late + 1..].find("[[peer]]").unwrap();
        let b = format!(
            "{}[[peer]]\nserver_name = \"top.test\"\npins = [\"{}\", \"{}\"]\n\n{}{}",
            &a[..first],
            pin(40),
            pin(41),
            &a[first..late],
            &a[late_end..]
        );
        let source = |t: &str| bytes::Bytes::copy_from_slice(t.as_bytes());
        let mut set = PinSet::parse_source(source(&a)).expect("a parses");
        for (step, text) in [&b, &a, &b, &a].into_iter().enumerate() {
            let next = PinSet::parse_source_after(source(text), Some(&set)).expect("parses");
            assert_eq!(
                outcome(Ok(next.clone())),
                outcome(PinSet::parse_whole(text)),
                "step {step}"
            );
            let (sections, reused) = next.sections_reused().expect("in sections");
            // Every reload takes all sections but the one peer that
            // differs (a first load keeps its sections too, whatever the
            // file's size).
            assert_eq!(reused, sections - 1, "step {step}: all but the added peer");
            set = next;
        }
    }

    /// `text` with a peer `name` (pins `pin(a)`, `pin(b)`) inserted at
    /// `at`, under the header line `header`.
    fn peer_at(text: &str, at: usize, header: &str, name: &str, (a, b): (u8, u8)) -> String {
        format!(
            "{}{header}\nserver_name = \"{name}\"\npins = [\"{}\", \"{}\"]\n{}",
            &text[..at],
            pin(a),
            pin(b),
            &text[at..]
        )
    }

    /// Only a section whose check had nothing to say, with one peer, is
    /// taken: one with a warning is checked again (its warning located in
    /// the new text), and so is one holding two peers (an indented header).
    #[test]
    fn sections_with_findings_or_two_peers_are_checked_again() {
        let good = many_peers(30, "\n", false);
        let single = format!("pins = [\"{}\"]\n", pin(9));
        let warned = good.replacen(
            "server_name = \"p20.test\"\n",
            &format!("server_name = \"p20.test\"\n{single}# "),
            1,
        );
        let p25 = warned.find("[[peer]]\nserver_name = \"p25.test\"").unwrap();
        let two = peer_at(&warned, p25, "  [[peer]]", "two.test", (30, 31));
        let prior = PinSet::parse_on_threads(&two, 2).expect("parses");
        assert_eq!(prior.warnings.len(), 1, "{:?}", prior.warnings);
        // A peer added at the top: every section moves down three lines.
        let first = two.find("[[peer]]").unwrap();
        let moved = peer_at(&two, first, "[[peer]]", "top.test", (40, 41));
        let after = PinSet::parse_after_on_threads(&moved, &prior, 2).expect("parses");
        // 31 sections: the new one, the warned one and the one with two
        // peers are parsed; the other 28 taken.
        assert_eq!(after.sections_reused(), Some((31, 28)));
        let fresh = PinSet::parse_whole(&moved).expect("parses");
        assert_eq!(after.warnings, fresh.warnings);
        assert_eq!(
            after.warnings[0].line,
            prior.warnings[0].line + 3,
            "{:?}",
            after.warnings
        );
        assert_eq!(outcome(Ok(after)), outcome(Ok(fresh)));
    }

    /// The checking threads' runs: in order, about `per` peers each, the
    /// first index of each right, a large group split and no peer lost.
    #[test]
    fn runs_split_only_what_does_not_fit() {
        let set = PinSet::parse_whole(&many_peers(5, "\n", false)).expect("parses");
        let raw = |n: usize| -> PeerList {
            let text = many_peers(n, "\n", false);
            toml::from_str::<RawFile>(&text).expect("toml").peer
        };
        let reused = |k: usize| Group::Reused {
            peer: &set.peers()[k],
            line: k,
        };
        let groups = vec![
            Group::Parsed {
                base: 0,
                peers: raw(1),
            },
            reused(0),
            Group::Parsed {
                base: 7,
                peers: raw(5),
            },
            Group::Parsed {
                base: 9,
                peers: Vec::new(),
            },
            reused(1),
        ];
        let runs = Group::runs(groups, 3);
        let shape: Vec<(usize, Vec<(usize, usize)>)> = runs
            .iter()
            .map(|(start, groups)| {
                let each = groups.iter().map(|g| match g {
                    Group::Parsed { base, peers } => (*base, peers.len()),
                    Group::Reused { line, .. } => (100 + line, 1),
                    Group::Checked(c) => (200 + c.i, 1),
                });
                (*start, each.collect())
            })
            .collect();
        assert_eq!(
            shape,
            [
                (0, vec![(0, 1), (100, 1), (7, 1)]),
                (3, vec![(7, 3)]),
                (6, vec![(7, 1), (101, 1)]),
            ]
        );
        assert!(Group::runs(Vec::new(), 0).is_empty());
    }

    /// `peer` in the head, even as an empty array, makes the whole text
    /// invalid (the headers cannot extend it): the sections must not
    /// accept it.
    #[test]
    fn a_peer_key_in_the_head_is_read_whole() {
        let good = many_peers(10, "\n", false);
        let text = good.replacen("[policy]", "peer = []\n[policy]", 1);
        assert!(Parsed::in_sections(
            &text,
            &LineIndex::new(&text),
            2,
            None,
            bytes::Bytes::new(),
            1
        )
        .is_none());
        let prior = PinSet::parse_on_threads(&good, 2).expect("good parses");
        let after = outcome(PinSet::parse_after_on_threads(&text, &prior, 2));
        assert!(after.starts_with("error"), "{after}");
        assert_eq!(after, outcome(PinSet::parse_whole(&text)));
    }
}
