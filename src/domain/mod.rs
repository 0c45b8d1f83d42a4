//! Values parsed at the edge: once a handler holds one, it is valid.

pub mod integer;
pub mod listing;
pub mod merchant;
pub mod order;
pub mod product;
pub mod webhook_url;
