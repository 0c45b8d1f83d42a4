-- The customer's phone number (E.164, checked at the edge), given at checkout for SMS about the
-- order. Nullable and without a default: adding it rewrites no row and holds the table's lock
-- only for the catalog change.
ALTER TABLE orders ADD COLUMN customer_phone text;
