//! What a change writes for the jobs that follow it (an order event's jobs, an audit entry),
//! handed to the store as its [`Outbox`]: the store names no kind of job.

use crate::jobs::kinds::{AUDIT, ORDER_ANALYTICS, ORDER_EMAIL, ORDER_SMS, WEBHOOK};
use crate::settings::Settings;
use crate::store::jobs::{Kind, NewJob, Outbox};
use uuid::Uuid;

/// The recipes a change hands the store, with `jobs.max_attempts` for kinds that name none.
pub fn outbox(settings: &Settings) -> Outbox {
    Outbox {
        order_jobs: for_order_event,
        sms_job: sms_for_order_event,
        audit_job: audit_of_change,
        default_attempts: settings.jobs.max_attempts as i32,
    }
}

/// The audit job of a change made by `actor` to an entity.
pub fn audit(action: &str, actor: &str, entity_type: &str, entity_id: &str) -> NewJob {
    audit_of_change(action, actor, entity_type, entity_id, None)
}

/// The audit job of a change, with the fields an update changed (`None`: not an update).
pub fn audit_of_change(
    action: &str,
    actor: &str,
    entity_type: &str,
    entity_id: &str,
    changes: Option<serde_json::Value>,
) -> NewJob {
    let mut payload = serde_json::json!({"action": action, "actor": actor, "entity_type": entity_type, "entity_id": entity_id});
    if let Some(changes) = changes {
        payload["changes"] = changes;
    }
    NewJob {
        kind: &AUDIT,
        payload,
        dedup_key: Uuid::now_v7().to_string(),
        ordering_key: None,
    }
}

/// The jobs that follow an order event: the customer's email, the merchant's webhook (when it
/// has a URL), analytics and the audit trail (with `changes`, the fields a status change
/// changed).
pub fn for_order_event(
    event: &str,
    order_id: Uuid,
    has_webhook: bool,
    actor: &str,
    changes: Option<serde_json::Value>,
) -> Vec<NewJob> {
    let order = || Some(order_id.to_string());
    let mut jobs = vec![NewJob {
        kind: &ORDER_EMAIL,
        payload: serde_json::json!({"event": event, "order_id": order_id}),
        dedup_key: format!("{event}:{order_id}"),
        ordering_key: order(),
    }];
    if has_webhook {
        jobs.push(NewJob {
            kind: &WEBHOOK,
            payload: serde_json::json!({"event_id": Uuid::now_v7(), "type": event, "order_id": order_id}),
            dedup_key: format!("{event}:{order_id}"),
            ordering_key: order(),
        });
    }
    if matches!(event, "order.created" | "order.cancelled") {
        jobs.push(NewJob {
            kind: &ORDER_ANALYTICS,
            payload: serde_json::json!({"event": event, "order_id": order_id}),
            dedup_key: format!("{event}:{order_id}"),
            ordering_key: order(),
        });
    }
    jobs.push(NewJob {
        dedup_key: format!("{event}:{order_id}"),
        ..audit_of_change(event, actor, "order", &order_id.to_string(), changes)
    });
    jobs
}

/// The customer's SMS about an order event, written beside [`for_order_event`]'s jobs when the
/// order has a phone number. Its job id is the message's stable id.
pub fn sms_for_order_event(event: &str, order_id: Uuid) -> NewJob {
    NewJob {
        kind: &ORDER_SMS,
        payload: serde_json::json!({"event": event, "order_id": order_id}),
        dedup_key: format!("{event}:{order_id}"),
        ordering_key: Some(order_id.to_string()),
    }
}

/// The kinds an order event writes for an order with a phone number
/// ([`sms_for_order_event`]), beside [`order_event`]'s.
pub fn sms_event(phone: bool) -> &'static [&'static Kind] {
    if phone {
        &[&ORDER_SMS]
    } else {
        &[]
    }
}

/// The kinds an order event writes ([`for_order_event`]): the webhook only when the
/// merchant has a URL.
pub fn order_event(webhook: bool) -> &'static [&'static Kind] {
    const WITH: [&Kind; 4] = [&ORDER_EMAIL, &WEBHOOK, &ORDER_ANALYTICS, &AUDIT];
    const WITHOUT: [&Kind; 3] = [&ORDER_EMAIL, &ORDER_ANALYTICS, &AUDIT];
    if webhook {
        &WITH
    } else {
        &WITHOUT
    }
}
