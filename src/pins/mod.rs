//! Pins: the `sha256/…` type, the pin file, and the hot-reloaded [`PinStore`].

mod file;
mod pin;
mod store;

pub use file::{
    normalize_lookup, normalize_tls_name, split_server_name, Diagnostic, ExpiredPolicy, Mode, Peer,
    PeerEntry, PinFileError, PinSet, Policy, Trust, UnpinnedPolicy,
};
pub use pin::{Pin, PinParseError, PIN_PREFIX};
#[cfg(unix)]
pub use store::spawn_sighup_reload;
pub use store::{PinStore, ReloadOutcome, ReloadRecord, WatchHandle, DEFAULT_SETTLE};
