//! The job kinds, declared in one list: each names its queue and its attempts.

use crate::store::jobs::Kind;

pub const ORDER_EMAIL: Kind = Kind {
    name: "order_email",
    queue: "email",
    max_attempts: None,
};
pub const WEBHOOK: Kind = Kind {
    name: "webhook",
    queue: "webhooks",
    max_attempts: None,
};
pub const SALES_REPORT: Kind = Kind {
    name: "sales_report",
    queue: "reports",
    max_attempts: Some(3),
};
pub const ORDER_ANALYTICS: Kind = Kind {
    name: "order_analytics",
    queue: "analytics",
    max_attempts: None,
};
pub const ORDER_SMS: Kind = Kind {
    name: "order_sms",
    queue: "sms",
    max_attempts: None,
};
pub const AUDIT: Kind = Kind {
    name: "audit",
    queue: "audit",
    max_attempts: None,
};

pub const NOOP: Kind = Kind {
    name: "noop",
    queue: "noop",
    max_attempts: None,
};

pub const KINDS: [&Kind; 7] = [
    &ORDER_EMAIL,
    &ORDER_SMS,
    &WEBHOOK,
    &SALES_REPORT,
    &ORDER_ANALYTICS,
    &AUDIT,
    &NOOP,
];
