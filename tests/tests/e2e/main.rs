//! End-to-end suites: real nats-server with JetStream, Herald's services, real HTTP receivers.
//! One binary for the crate keeps link time down.

mod bootstrap;
mod catalog;
mod chaos;
mod cli;
mod cluster;
mod console;
mod crash;
mod delivery;
mod destinations;
mod docs;
mod egress;
mod endpoint_auth;
mod filters;
mod gateway;
mod health;
mod inbound;
mod lanes;
mod observability;
mod operational;
mod partitions;
mod polling;
mod records;
mod redis_ha;
mod retry;
mod scaleout;
mod security;
mod signing;
mod ssrf;
mod subscriptions;

use std::time::Duration;

/// Generous bound for anything that should happen within moments.
pub const SOON: Duration = Duration::from_secs(15);
