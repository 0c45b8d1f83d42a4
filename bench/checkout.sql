-- pgbench: the checkout transaction's SQL (see src/store/orders.rs), without the service: the
-- deadline's SET LOCALs, the row locks, the order, its items and its outbox rows (no NOTIFY).
-- bench_checkout holds the checkout products numbered 1..n; :merchant and :seq are set by -D.
\set n1 random(1, :products)
\set n2 random(1, :products)
BEGIN;
SET LOCAL statement_timeout = 5000;
SET LOCAL lock_timeout = 5000;
SELECT id AS p1 FROM bench_checkout WHERE n = :n1 \gset
SELECT id AS p2 FROM bench_checkout WHERE n = :n2 \gset
SELECT order_sequence, webhook_url IS NOT NULL FROM merchants WHERE id = ':merchant';
SELECT id, sku, name, price_cents, currency, stock, status = 'active' FROM products
  WHERE merchant_id = ':merchant' AND id = ANY(ARRAY[':p1', ':p2']::uuid[]) ORDER BY id FOR NO KEY UPDATE;
UPDATE products SET stock = stock - 1, version = version + 1, updated_at = now()
  WHERE id = ANY(ARRAY[':p1', ':p2']::uuid[]);
INSERT INTO orders (id, merchant_id, number, customer_email, customer_name, total_cents, currency, created_at, updated_at)
  VALUES (gen_random_uuid(), ':merchant', nextval(':seq'::text::regclass), 'load@example.com', NULL, 100, 'EUR', clock_timestamp(), clock_timestamp())
  RETURNING id AS order_id \gset
INSERT INTO order_items (order_id, line, product_id, sku, name, unit_price_cents, quantity)
  SELECT ':order_id', row_number() OVER (ORDER BY id), id, sku, name, price_cents, 1
  FROM products WHERE id = ANY(ARRAY[':p1', ':p2']::uuid[]);
INSERT INTO jobs (id, merchant_id, queue, kind, payload, max_attempts, dedup_key)
  SELECT gen_random_uuid(), ':merchant', q, 'bench', '{}'::jsonb, 10, q || ':' || ':order_id'
  FROM unnest(ARRAY['email', 'analytics', 'audit']) q;
COMMIT;
