-- What the background jobs keep: reports, the analytics aggregates and the audit trail.

-- Jobs sharing an ordering key run one at a time, oldest first (an order's webhooks and
-- analytics follow its events in order).
ALTER TABLE jobs ADD COLUMN ordering_key text;
-- Claiming reads the due jobs of a queue in (run_at, id) order: with the id in the index a claim
-- reads only the rows it takes. Without it, jobs due at the same moment (a burst) were all read
-- and sorted by every claim.
DROP INDEX jobs_due;
CREATE INDEX jobs_due ON jobs (queue, run_at, id) WHERE status IN ('queued', 'failed');
-- When the current (or last) run started: commit-to-start latency, and "running since" for ops.
ALTER TABLE jobs ADD COLUMN started_at timestamptz;
CREATE INDEX jobs_ordering ON jobs (queue, ordering_key, created_at)
    WHERE ordering_key IS NOT NULL AND status IN ('queued', 'running', 'failed');

CREATE TABLE reports (
    id           uuid PRIMARY KEY,
    merchant_id  uuid NOT NULL REFERENCES merchants (id),
    kind         text NOT NULL CHECK (kind IN ('sales')),
    from_day     date NOT NULL,
    -- Before from_day: the empty range (an empty report).
    to_day       date NOT NULL,
    format       text NOT NULL CHECK (format IN ('csv')),
    status       text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'ready', 'failed')),
    job_id       uuid NOT NULL,
    content      bytea,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX reports_merchant ON reports (merchant_id, created_at);

-- Daily sales per merchant, kept by the analytics jobs.
CREATE TABLE analytics_daily (
    merchant_id    uuid NOT NULL REFERENCES merchants (id),
    day            date NOT NULL,
    orders         bigint NOT NULL DEFAULT 0,
    units          bigint NOT NULL DEFAULT 0,
    revenue_cents  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (merchant_id, day)
);

-- One row per order event applied to the aggregates: a job that runs twice finds its row and
-- changes nothing.
CREATE TABLE analytics_applied (
    order_id  uuid NOT NULL,
    event     text NOT NULL,
    PRIMARY KEY (order_id, event)
);

CREATE TABLE audit_log (
    id           uuid PRIMARY KEY,
    merchant_id  uuid NOT NULL REFERENCES merchants (id),
    actor        text NOT NULL,
    action       text NOT NULL,
    entity_type  text NOT NULL,
    entity_id    text NOT NULL,
    at           timestamptz NOT NULL
);
CREATE INDEX audit_log_merchant ON audit_log (merchant_id, at DESC, id DESC);
