//! The one error type of the `pinctl` workflows.

/// Why a `pinctl` workflow stopped. Each kind has one exit code, chosen by
/// the binary; the text is the whole message (the binary adds `pinctl: `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinctlError {
    /// The command line asks for something that cannot be done (usage).
    #[error("{0}")]
    Usage(String),
    /// An input could not be read or used: a file, the pin file, a peer
    /// that cannot be reached, an edit that would not validate.
    #[error("{0}")]
    Input(String),
    /// A server name that is not in the pin file.
    #[error("{0}")]
    NotListed(String),
}

impl PinctlError {
    /// An [`PinctlError::Input`] error from anything that displays.
    pub fn input(e: impl std::fmt::Display) -> Self {
        PinctlError::Input(e.to_string())
    }
}
