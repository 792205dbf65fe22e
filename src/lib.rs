//! tollgate: an API gateway on Pingora that runs Express Gateway's configuration unchanged.

// The library is the binary's and its tests': its documentation is read with the private
// items (`cargo doc --document-private-items`), where links to them resolve.
#![allow(rustdoc::private_intra_doc_links)]

pub mod access_log;
pub mod admin;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod consumers;
pub mod counters;
pub mod exchange;
pub mod fastpath;
pub mod framing;
pub mod gateway;
pub mod health;
pub mod lifecycle;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod policies;
pub mod proxy;
pub mod request_id;
pub mod responses;
pub mod routing;
pub mod server;
pub mod store;
pub mod upstream;
pub mod wire;
