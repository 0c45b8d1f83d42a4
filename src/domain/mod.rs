//! Values parsed at the edge: once a handler holds one, it is valid.

pub mod merchant;
