//! The HTTP edge: middleware, extractors and the fallback that turns every error response into
//! problem+json.

pub mod auth;
pub mod client_ip;
pub mod compress;
pub mod credentials;
pub mod deadline;
pub mod figures;
pub mod guard_figures;
pub mod json;
pub mod metrics;
pub mod ports;
pub mod problems;
pub mod rate_limit;
pub mod refusal;
pub mod request_id;
pub mod shed;

pub use credentials::{AdminAuth, MerchantAuth};
pub use json::Json;
