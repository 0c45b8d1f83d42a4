//! Integration tests, one binary (one link) for all: each module reads as the contract it checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod actors;
mod catalog;
mod orders;
mod pagination;
mod checkout;
mod idempotency;
mod cli;
mod db_actor;
mod edge;
