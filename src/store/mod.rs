//! Typed database commands, run by the `Db` actor. One module per aggregate.

pub mod merchants;
pub mod migrate;
