//! The demo merchant of `make run`. Its key is kept in `<data_dir>/demo-api-key` so later starts
//! can print it again: a development convenience that production configuration leaves off.
//!
//! The kept key belongs to the embedded cluster: only a run on that cluster writes the file, and
//! a kept key is printed only after it authenticates against the database this run serves. A key
//! that does not (another database, a cluster made anew) is replaced by a new demo merchant's.

use crate::blocking::blocking;
use crate::domain::merchant::{hash_api_key, NewMerchant};
use crate::pg_cluster::write_private;
use crate::settings::Settings;
use crate::store::merchants::{self, FindByKey};
use rampart_actors::{Db, DbError, Handle};

/// The demo merchant's API key: the kept one when it works here, else a new merchant's.
pub async fn ensure(
    db: &Handle<Db>,
    settings: &Settings,
    embedded: bool,
) -> Result<String, DbError> {
    let path = settings.database.data_dir.join("demo-api-key");
    let read_from = path.clone();
    let kept = blocking(move || std::fs::read_to_string(read_from).ok())
        .await
        .ok()
        .flatten()
        .map(|k| k.trim().to_owned());
    if let Some(key) = kept {
        if db.run(FindByKey(hash_api_key(&key))).await?.is_some() {
            return Ok(key);
        }
    }
    let input =
        NewMerchant::parse("Demo Store", None, true).map_err(|e| DbError::Other(e.to_string()))?;
    let created = merchants::create(db, input).await?;
    tracing::info!(merchant_id = %created.merchant.id, "demo merchant created");
    if embedded {
        let key = created.api_key.clone();
        let dir = settings.database.data_dir.clone();
        let written = blocking(move || {
            std::fs::create_dir_all(&dir)?;
            // A credential: readable by the service's user only.
            write_private(&path, &key)
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!("could not keep the demo API key");
        }
    }
    Ok(created.api_key)
}
