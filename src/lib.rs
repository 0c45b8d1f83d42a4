//! Rampart: a commerce backend on supervised actors. The layers, lowest first (each imports only
//! those below it; see `docs/architecture.md`):
//!
//! - `settings`, `error`, `telemetry`, `pg_cluster`, `blocking`, `cli`: the ground;
//! - `domain`: values parsed at the edge;
//! - `store`: typed SQL commands, run by the `Db` actor;
//! - `jobs`: the job kinds, what a change writes for them, their runners;
//! - `catalog`, `replicas`, `storefront_cache`, `probes`, `known_keys`: what the readers share;
//! - `state`: what handlers and the edge hold;
//! - `http`: the edge's middleware and extractors;
//! - `routes`: one small module per endpoint group;
//! - `demo`, `startup`: the supervision tree, the HTTP server, the demo merchant; then `main`.

pub mod blocking;
pub mod catalog;
pub mod cli;
pub mod demo;
pub mod domain;
pub mod error;
pub mod http;
pub mod jobs;
pub mod known_keys;
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
