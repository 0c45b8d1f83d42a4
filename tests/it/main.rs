//! Integration tests, one binary (one link) for all: each module reads as the contract it checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod actors;
mod bad_input;
mod cache;
mod catalog;
mod checkout;
mod cli;
mod commit_outcome;
mod contract;
mod credentials;
mod db_actor;
mod deadlines;
mod deployment;
mod docs;
mod edge;
mod explain;
mod guardians;
mod idempotency;
mod jobs;
mod ops;
mod orders;
mod overload;
mod pagination;
mod proxy;
mod receivers;
mod replicas;
mod reports_and_audit;
mod scale_out;
mod shared_cache;
mod sms;
mod telemetry;
mod tenancy;
