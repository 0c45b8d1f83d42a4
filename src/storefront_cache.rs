//! The storefront's use of the `Cache` actor: keys (each carries the merchant, so one tenant is
//! never served another's entry), freshness per kind, the read-through of a product and of a
//! list page, and what a write invalidates.
//!
//! A write invalidates before its response is sent, so the writer's next read on this instance
//! sees it; other instances drop their copies when the Redis channel's broadcast arrives
//! (milliseconds). A broadcast lost while Redis was away cannot outlive an entry's freshness.

use crate::domain::listing::CursorKey;
use crate::error::ApiError;
use crate::replicas::Reads;
use crate::routes::products::ProductListing;
use crate::settings::Settings;
use crate::store::merchants::Exists;
use crate::store::products::{self, Product};
use actix_web::http::header::HeaderValue;
use rampart_actors::{
    current_deadline, with_deadline, Cache, CacheReader, DbError, Entry, Handle, LoadError, Loaded,
    Loader, Lookup, SharedTier,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

#[derive(Clone)]
pub struct StoreCache {
    pub handle: Handle<Cache>,
    pub reader: CacheReader,
    /// The Redis tier, for readiness and metrics.
    pub shared: Option<SharedTier>,
    /// `Cache-Control` of storefront product reads (`cache.storefront_max_age_secs`).
    pub cache_control: HeaderValue,
    product_ttl: Duration,
    list_ttl: Duration,
}

fn product_key(merchant_id: Uuid, id: Uuid) -> String {
    format!("product:{merchant_id}:{id}")
}

/// The cache scope of a merchant's catalog: every write to it bumps the scope.
pub fn scope(merchant_id: Uuid) -> String {
    format!("merchant:{merchant_id}")
}

impl StoreCache {
    pub fn new(
        handle: Handle<Cache>,
        reader: CacheReader,
        shared: Option<SharedTier>,
        settings: &Settings,
    ) -> Self {
        Self {
            handle,
            reader,
            shared,
            cache_control: HeaderValue::from_str(&format!(
                "public, max-age={}, must-revalidate",
                settings.cache.storefront_max_age_secs
            ))
            .unwrap_or(HeaderValue::from_static("no-cache")),
            product_ttl: Duration::from_secs(settings.cache.product_ttl_secs),
            list_ttl: Duration::from_secs(settings.cache.list_ttl_secs),
        }
    }

    /// An active product of a store, serialized with its tag: from the tier when fresh, else
    /// loaded once for every concurrent reader; when the load fails because the database is
    /// unavailable, the last value within `cache.stale_if_error_secs`.
    pub async fn product(
        &self,
        reads: &Reads,
        merchant_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Arc<Entry>>, ApiError> {
        let reads = reads.clone();
        let load = async move || {
            let product = reads
                .run(
                    merchant_id,
                    products::Get {
                        merchant_id,
                        id,
                        active_only: true,
                    },
                )
                .await?;
            product.map(|p| serialize(&p)).transpose()
        };
        let key = product_key(merchant_id, id);
        self.read_through(key, scope(merchant_id), self.product_ttl, load)
            .await
    }

    /// A storefront list page, serialized: from the tier when fresh, else loaded once. The key
    /// carries the merchant's generation, which every write to the merchant bumps. `None`: no
    /// such store.
    pub async fn list(
        &self,
        reads: &Reads,
        listing: ProductListing,
        cursor_key: CursorKey,
    ) -> Result<Option<Arc<Entry>>, ApiError> {
        let merchant_id = listing.query.merchant_id;
        let scope = scope(merchant_id);
        let key = format!(
            "list:{merchant_id}:{}:{}",
            self.reader.generation(&scope),
            listing.fingerprint()
        );
        let reads = reads.clone();
        let load = async move || {
            let result = reads
                .run(merchant_id, products::List(listing.query.clone()))
                .await?;
            // An empty page may mean there is no such store: only then is it worth asking.
            if result.rows.is_empty() && !reads.run(merchant_id, Exists(merchant_id)).await? {
                return Ok(None);
            }
            Ok(Some((listing.body(result, &cursor_key), Arc::from(""))))
        };
        self.read_through(key, scope, self.list_ttl, load).await
    }

    /// The read-through every kind shares: a fresh entry from the tier; else `load` (within the
    /// request's deadline) once for all concurrent misses, its body and tag stored fresh for
    /// `fresh_for`; when that fails because the database is unavailable, the stale entry if any.
    async fn read_through<L, F>(
        &self,
        key: String,
        scope: String,
        fresh_for: Duration,
        load: L,
    ) -> Result<Option<Arc<Entry>>, ApiError>
    where
        L: FnOnce() -> F + Send + 'static,
        F: Future<Output = Result<Option<(Vec<u8>, Arc<str>)>, DbError>> + Send + 'static,
    {
        let stale = match self.reader.lookup(&key) {
            Lookup::Fresh(entry) => return Ok(Some(entry)),
            Lookup::Stale(entry) => Some(entry),
            Lookup::Missing => None,
        };
        // The load runs on the actor's thread, outside this request's task: its deadline goes along.
        let deadline = current_deadline();
        let loader: Loader = Box::new(move || {
            Box::pin(async move {
                let loaded = match deadline {
                    Some(at) => with_deadline(at, load()).await,
                    None => load().await,
                }
                .map_err(|e| Arc::new(e) as LoadError)?;
                Ok(loaded.map(|(body, tag)| Loaded {
                    body: body.into(),
                    tag,
                    fresh_for,
                }))
            })
        });
        match self.handle.load(key.into(), Some(scope), loader).await {
            Ok(entry) => Ok(entry),
            Err(e) => {
                let error = ApiError::from_load(&e);
                match stale {
                    Some(entry) if error.is_unavailable() => {
                        self.reader.served_stale();
                        Ok(Some(entry))
                    }
                    _ => Err(error),
                }
            }
        }
    }

    /// Forgets what a write to these products of this merchant changed (and every list of the
    /// merchant), before the write's response is sent. It runs as a task of its own, so a
    /// client that goes away after the commit cannot leave the old value cached.
    pub async fn invalidate(&self, merchant_id: Uuid, products: impl IntoIterator<Item = Uuid>) {
        let keys: Vec<String> = products
            .into_iter()
            .map(|id| product_key(merchant_id, id))
            .collect();
        let this = self.clone();
        let _ =
            actix_web::rt::spawn(async move { this.send_invalidation(merchant_id, keys).await })
                .await;
    }

    async fn send_invalidation(&self, merchant_id: Uuid, keys: Vec<String>) {
        let invalidate = rampart_actors::Invalidate {
            keys: keys.clone(),
            scopes: vec![scope(merchant_id)],
        };
        if let Err(e) = self.handle.call(invalidate).await {
            // The actor could not take it: drop the entries here, so no reader is served the
            // old value (a load already in flight may still store it until its freshness ends).
            tracing::error!(error = %e, "cache invalidation through the actor failed");
            self.reader.mark_changed([scope(merchant_id).as_str()]);
            for key in keys {
                self.reader.evict(&key);
            }
        }
    }
}

fn serialize(product: &Product) -> Result<(Vec<u8>, Arc<str>), DbError> {
    let body = serde_json::to_vec(product).map_err(|e| DbError::Other(e.to_string()))?;
    Ok((body, product.etag().into()))
}
