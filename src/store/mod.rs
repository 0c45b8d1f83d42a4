//! Typed database commands, run by the `Db` actor. One module per aggregate.

pub mod audit;
pub mod checkout;
pub mod jobs;
pub mod merchants;
pub mod migrate;
pub mod orders;
pub mod paging;
pub mod products;
pub mod transaction;
