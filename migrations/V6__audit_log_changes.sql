-- What an update changed: {"field": {"old": ..., "new": ...}} for each field it changed; NULL
-- where it does not apply (a creation, a checkout, an order event, a report request).
ALTER TABLE audit_log ADD COLUMN changes jsonb;
