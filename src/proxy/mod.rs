//! The proxies: outbound (CONNECT + interception + pinned upstream) and
//! inbound (TLS termination + edge rules + forward to the homeserver).

pub mod access_log;
pub mod admin;
pub mod ascii;
pub mod connect_target;
pub mod inbound;
pub mod io;
pub mod kept;
pub mod lanes;
pub mod outbound;
pub mod parking;
pub mod peer_results;
pub mod relay;
pub mod status_page;
pub mod upstream;
pub mod woken;
pub mod xmatrix;
