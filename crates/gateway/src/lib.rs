//! The chat server node: HTTP and WebSocket front end, sessions, the send pipeline and the
//! `/v1` API, wired to a store and a router chosen by configuration.
//!
//! `main.rs` is a thin CLI over [`server::Node`]; integration tests start the binary.

pub mod api;
pub mod archive;
pub mod auth;
pub mod backends;
pub mod backup;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod compliance;
pub mod config;
pub mod directory;
pub mod directory_admin;
pub mod disk;
pub mod error;
pub mod events;
#[cfg(feature = "test-hooks")]
pub mod faults;
pub mod files;
pub mod frame_meter;
pub mod group_admin;
pub mod groups;
pub mod hashing;
pub mod health;
pub mod holdback;
pub mod holds;
pub mod hub;
pub mod jwt_crypto;
pub mod leavers;
pub mod listener;
pub mod membership;
pub mod messages;
pub mod meta_archive;
pub mod metrics;
pub mod moderation;
pub mod ops;
pub mod order;
pub mod penalties;
pub mod policy;
pub mod post_commit;
pub mod posts;
pub mod pump;
pub mod read_budget;
pub mod retention;
pub mod revocation;
pub mod send;
pub mod server;
pub mod session;
pub mod signin;
pub mod state;
pub mod tls;
pub mod user_rates;
pub mod ws_handshake;
