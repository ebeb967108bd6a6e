//! Alert sinks: where an [`crate::alert::AlertHub`] delivers alerts besides
//! the log. Each sink runs on its own task behind the hub's bounded queue
//! ([`crate::alert::SinkQueue`]), so a slow or failing sink never blocks a
//! handshake:
//!
//! * [`CommandSink`]: an operator's command, fed one alert as JSON on stdin;
//! * [`WebhookSink`]: an HTTPS POST of the alert JSON;
//! * [`MatrixSink`]: an `m.notice` in a Matrix room, batched under a flood.
//!
//! The HTTPS sinks use the crate's one client ([`crate::https`]), with Web PKI
//! plus any configured anchors ([`HttpTarget`]).

mod command;
mod http;

pub use command::CommandSink;
pub use http::{HttpTarget, MatrixSink, SinkError, WebhookSink};
