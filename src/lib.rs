//! Rampart: a commerce backend on supervised actors.

pub mod cli;
pub mod demo;
pub mod domain;
pub mod error;
pub mod http;
pub mod jobs;
pub mod pg_cluster;
pub mod probes;
pub mod replicas;
pub mod routes;
pub mod settings;
pub mod startup;
pub mod state;
pub mod store;
pub mod storefront_cache;
pub mod telemetry;
