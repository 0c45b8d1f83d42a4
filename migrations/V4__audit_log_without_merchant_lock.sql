-- An audit entry is written by its job after the change it records, for a merchant the queuing
-- transaction already checked (merchants are never deleted). Its foreign key made every entry
-- take a key-share lock on the merchant's row, the row every checkout's order insert locks the
-- same way: under load each entry of a batch found that row locked by a new multixact of the
-- checkouts in flight and had to look it up (the audit insert cost 4-5 times what it cost at
-- rest, `make bench SCENARIO=jobs`). The trail is append-only and read by merchant through its
-- index; nothing relies on the constraint.
ALTER TABLE audit_log DROP CONSTRAINT audit_log_merchant_id_fkey;
