//! The work behind `pinctl`, as library workflows that return typed results:
//! the binary parses arguments, calls one of these, prints, and chooses the
//! exit code.
//!
//! [`enrol`] is `pinctl add` (discover, fetch the chain, choose, self-check,
//! write), [`live`] is `pinctl verify` (the live check of pinned peers),
//! [`inspect`] holds the offline commands (`hash`, `check`, `list --json`),
//! [`target`] the shared connection set-up (discovery, `--connect`,
//! `--connect-to`, extra roots) and [`signing`] the signing-key read over a
//! pinned connection. Errors are [`error::PinctlError`].

pub mod enrol;
pub mod error;
pub mod inspect;
pub mod live;
pub mod signing;
pub mod target;
