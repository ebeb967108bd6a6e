//! The command lines of the two binaries, as clap definitions.
//!
//! The binaries (`src/bin/fedpin.rs`, `src/bin/pinctl.rs`) parse with these
//! types and do the work; keeping the definitions in the library lets other
//! code build the same [`clap::Command`]s without running a binary: the man
//! pages under `man/` are generated from them (`tests/packaging.rs` checks
//! the committed copies are current), and so are the shell completions,
//! written at packaging time by `debian/completions.sh`.

pub mod fedpin;
pub mod pinctl;
