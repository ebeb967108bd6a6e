//! The Matrix layer fedpin pins and verifies beside TLS keys: canonical JSON,
//! X-Matrix request signatures, and server signing keys.
//!
//! # The attack these modules close
//!
//! Synapse authenticates a federation request by its X-Matrix signature, made
//! with the origin's signing key, which Synapse fetches from the origin over
//! TLS checked against the Web PKI. fedpin's edge rules (origin deny/allow,
//! per-origin limits, the mutual-TLS binding) used to run on the origin the
//! request *claimed*: a flood of forged requests in a victim's name spent the
//! victim's rate budget, and a denied server could name an allowed one. Here
//! the edge verifies the signature itself, with keys fetched over the pinned
//! verifier (or pinned outright in the pin file, `signing_keys`), before any
//! rule runs, so the rules apply to an origin that proved who it is.

pub mod canonical_json;
pub mod server_name;
pub mod signing;
