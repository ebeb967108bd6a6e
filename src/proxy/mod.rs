//! The proxies: outbound (CONNECT + interception + pinned upstream).

pub mod egress;
pub mod outbound;
