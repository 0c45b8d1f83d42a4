-- Merchants, their catalog, orders, idempotency keys and the jobs outbox.

CREATE TABLE merchants (
    id              uuid PRIMARY KEY,
    name            text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    webhook_url     text,
    webhook_secret  text NOT NULL,
    api_key_hash    bytea NOT NULL,
    api_key_prefix  text NOT NULL,
    -- Per-merchant sequence giving order numbers: nextval never waits on another transaction.
    order_sequence  text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT merchants_api_key_hash_key UNIQUE (api_key_hash)
);

-- Checkout updates only stock, version and updated_at, none of them indexed: with room left on
-- each page those updates stay HOT and touch no index.
CREATE TABLE products (
    id           uuid PRIMARY KEY,
    merchant_id  uuid NOT NULL REFERENCES merchants (id),
    sku          text NOT NULL CHECK (char_length(sku) BETWEEN 1 AND 64),
    name         text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    description  text CHECK (char_length(description) <= 5000),
    price_cents  bigint NOT NULL CHECK (price_cents >= 0),
    currency     text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    stock        bigint NOT NULL CHECK (stock >= 0),
    category     text,
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
    version      bigint NOT NULL DEFAULT 1,
    search       tsvector GENERATED ALWAYS AS (
                     to_tsvector('simple', name || ' ' || coalesce(description, ''))
                 ) STORED,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT products_merchant_sku_key UNIQUE (merchant_id, sku)
) WITH (fillfactor = 80);

-- Keyset indexes, one per sort, ties broken by id. Merchant lists see every status; the
-- storefront only active products, so it gets partial indexes of its own.
CREATE INDEX products_merchant_created ON products (merchant_id, created_at, id);
CREATE INDEX products_merchant_price   ON products (merchant_id, price_cents, id);
CREATE INDEX products_merchant_name    ON products (merchant_id, name, id);
CREATE INDEX products_active_created ON products (merchant_id, created_at, id) WHERE status = 'active';
CREATE INDEX products_active_price   ON products (merchant_id, price_cents, id) WHERE status = 'active';
CREATE INDEX products_active_name    ON products (merchant_id, name, id) WHERE status = 'active';
CREATE INDEX products_active_category ON products (merchant_id, category, created_at, id) WHERE status = 'active';
CREATE INDEX products_search ON products USING gin (search);

CREATE TABLE orders (
    id              uuid PRIMARY KEY,
    merchant_id     uuid NOT NULL REFERENCES merchants (id),
    number          bigint NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled')),
    customer_email  text NOT NULL,
    customer_name   text,
    total_cents     bigint NOT NULL CHECK (total_cents >= 0),
    currency        text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orders_merchant_number_key UNIQUE (merchant_id, number)
);

CREATE INDEX orders_merchant_created ON orders (merchant_id, created_at DESC, id DESC);
CREATE INDEX orders_merchant_status_created ON orders (merchant_id, status, created_at DESC, id DESC);

CREATE TABLE order_items (
    order_id          uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line              integer NOT NULL,
    product_id        uuid NOT NULL REFERENCES products (id),
    sku               text NOT NULL,
    name              text NOT NULL,
    unit_price_cents  bigint NOT NULL CHECK (unit_price_cents >= 0),
    quantity          integer NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    PRIMARY KEY (order_id, line)
);

CREATE INDEX order_items_product ON order_items (product_id);

-- Stripe-style idempotency keys, scoped to the store. A row exists only for a request that
-- succeeded; it is written in the same transaction as the request's effects.
CREATE TABLE idempotency_keys (
    merchant_id      uuid NOT NULL REFERENCES merchants (id),
    key              text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    request_hash     bytea NOT NULL,
    response_status  smallint NOT NULL,
    response_body    bytea NOT NULL,
    location         text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, key)
);

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- The durable job queue, written as an outbox in the transactions whose effects it follows.
CREATE TABLE jobs (
    id            uuid PRIMARY KEY,
    merchant_id   uuid REFERENCES merchants (id),
    queue         text NOT NULL,
    kind          text NOT NULL,
    payload       jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'queued'
                  CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'dead')),
    attempts      integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL DEFAULT 10 CHECK (max_attempts > 0),
    run_at        timestamptz NOT NULL DEFAULT now(),
    locked_until  timestamptz,
    locked_by     text,
    last_error    text,
    dedup_key     text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);

-- Claiming: the due jobs of one queue, oldest first; only unfinished rows are indexed.
CREATE INDEX jobs_due ON jobs (queue, run_at) WHERE status IN ('queued', 'failed');
-- Leases that ran out (a crashed instance) are found by this one.
CREATE INDEX jobs_leased ON jobs (locked_until) WHERE status = 'running';
CREATE UNIQUE INDEX jobs_dedup ON jobs (queue, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX jobs_merchant ON jobs (merchant_id, created_at);
