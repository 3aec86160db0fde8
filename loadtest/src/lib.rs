//! Load-test harness for chatd.
//!
//! `loadtest <scenario>` expands a [`scenario::Scenario`] into a deterministic
//! [`plan::Plan`] (users, devices, groups, send and churn schedules), prepares the target
//! ([`setup`]: spawn a server, create groups), checks the OS limits ([`limits`]), runs one
//! task per simulated device ([`client`]) in this process or several ([`runner`]), measures
//! latency and throughput ([`metrics`]), checks that every expected delivery happened
//! ([`ledger`]), and writes a table, a JSON [`report`] and SVG plots ([`plot`]). The
//! [`ceiling`] module is a bare broadcaster to compare chatd with.

pub mod ceiling;
pub mod client;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod plan;
pub mod plot;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod setup;
