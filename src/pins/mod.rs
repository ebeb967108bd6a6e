//! Pins: the `sha256/…` type and the pin file (its parsed, validated
//! [`PinSet`]). The hot-reloaded store of the current set is
//! [`crate::pin_store`].
//!
//! # What the pin file's rules protect against
//!
//! * **Rejected whole, never in part.** A file that fails any check leaves the
//!   previous set in force: a half-applied file could drop one peer's entry
//!   (its impostor then falls back to `policy.unpinned`) or duplicate one
//!   (the first, wrong entry would win).
//! * **Only a file that holds still is loaded** ([`crate::pin_store`]): a tool that
//!   rewrites the file in place must not get its first half published.
//! * **Names are normalised once** (lowercase, no trailing dot, IP literals in
//!   one text form) and looked up exactly: `Peer.Example.` and `peer.example`
//!   cannot be two entries with different pins, and a lookup cannot miss an
//!   entry by spelling.
//! * **Pins are exact SHA-256 digests** of a `SubjectPublicKeyInfo`
//!   ([`Pin`]): no prefixes, no other hashes, nothing that could match more
//!   than one key.
//! * **Every host a peer's federation depends on is pinned for its own
//!   keys** (`hosts`, `host_pins`, `delegation`): the well-known front and
//!   the delegated endpoint often have different certificates, and an
//!   unpinned front lets an attacker redirect the whole peer.
//! * **A reload that removes peers says so** (`pins_removed`): a peer
//!   vanishing from the file silently downgrades it to the unpinned policy.

mod file;
mod pieces;
mod pin;
mod plain;

pub(crate) use file::parse_outcome;
pub use file::{
    normalize_lookup, normalize_tls_name, split_server_name, Diagnostic, ExpiredPolicy, Mode, Peer,
    PeerEntry, PinFileError, PinSet, Policy, Trust, UnpinnedPolicy,
};
pub use pin::{Pin, PinParseError, PIN_PREFIX};
pub(crate) use plain::check_sections as check_plain_reader;
