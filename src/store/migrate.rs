//! Applies the SQL migrations embedded from `migrations/` (refinery: versioned, checksummed).
//! An advisory lock lets several instances start at once without applying a migration twice.

use rampart_actors::{Conn, DbCommand, DbError};

mod embedded {
    refinery::embed_migrations!("migrations");
}

const MIGRATION_LOCK: i64 = 0x7261_6d70_6172_7401;

/// Applies pending migrations on a plain connection (the test harness's template database).
pub async fn apply(client: &mut tokio_postgres::Client) -> Result<(), DbError> {
    embedded::migrations::runner()
        .run_async(client)
        .await
        .map(|_| ())
        .map_err(|e| DbError::Other(format!("migration failed: {e}")))
}

pub struct Migrate;

impl DbCommand for Migrate {
    /// Names of the migrations applied by this run.
    type Output = Vec<String>;

    async fn run(self, client: &mut Conn) -> Result<Vec<String>, DbError> {
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let report = embedded::migrations::runner()
            .run_async(&mut ****client)
            .await;
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await?;
        let report = report.map_err(|e| DbError::Other(format!("migration failed: {e}")))?;
        Ok(report
            .applied_migrations()
            .iter()
            .map(|m| m.to_string())
            .collect())
    }
}
