//! Server signing keys.
