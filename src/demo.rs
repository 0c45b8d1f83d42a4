//! The demo merchant that `make run` creates on a fresh database. Its key is kept in
//! `<data_dir>/demo-api-key` so later starts can print it again: a development convenience that
//! production configuration leaves off.

use crate::domain::merchant::NewMerchant;
use crate::settings::Settings;
use crate::store::merchants::{self, Count};
use rampart_actors::{Db, DbError, Handle};

pub async fn ensure(db: &Handle<Db>, settings: &Settings) -> Result<String, DbError> {
    let path = settings.database.data_dir.join("demo-api-key");
    if db.run(Count).await? > 0 {
        if let Ok(key) = std::fs::read_to_string(&path) {
            return Ok(key.trim().to_owned());
        }
        return Ok("(created earlier; key not kept here)".to_owned());
    }
    let input =
        NewMerchant::parse("Demo Store", None, true).map_err(|e| DbError::Other(e.to_string()))?;
    let created = merchants::create(db, input).await?;
    let _ = std::fs::create_dir_all(&settings.database.data_dir);
    if let Err(e) = std::fs::write(&path, &created.api_key) {
        tracing::warn!(error = %e, "could not keep the demo API key");
    }
    tracing::info!(merchant_id = %created.merchant.id, "demo merchant created");
    Ok(created.api_key)
}
