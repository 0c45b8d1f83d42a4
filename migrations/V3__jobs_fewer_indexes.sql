-- Every version of a job row (insert, claim, outcome: three per job, three jobs per checkout)
-- adds an entry to each index whose predicate it meets, and the WAL of those entries is flushed
-- with the checkouts' commits. `jobs_merchant` indexed every version and served no query (a
-- job is read by its id; merchants are never deleted, so no foreign key check scans for them).
DROP INDEX jobs_merchant;
