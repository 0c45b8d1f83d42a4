//! The catalog as its readers share it: the cache scope of a merchant's catalog (which the
//! storefront cache bumps on every write and the read replicas compare against) and a product
//! list request parsed into the query to run and the page to show.

use crate::domain::listing::{listing_body, CursorKey, CursorScope};
use crate::domain::product::{ProductListParams, Sort};
use crate::error::ApiError;
use crate::settings::PaginationSettings;
use crate::store::paging::PageOf;
use crate::store::products::{Product, ProductQuery};
use uuid::Uuid;

/// The cache scope of a merchant's catalog: every write to it bumps the scope.
pub fn scope(merchant_id: Uuid) -> String {
    format!("merchant:{merchant_id}")
}

/// A product list request parsed: the query to run and the scope its cursors are bound to.
#[derive(Clone)]
pub struct ProductListing {
    pub query: ProductQuery,
    scope: CursorScope,
}

impl ProductListing {
    pub fn parse(
        key: &CursorKey,
        merchant_id: Uuid,
        storefront: bool,
        params: &ProductListParams,
        window: &PaginationSettings,
    ) -> Result<Self, ApiError> {
        let filter = params.filter(storefront)?;
        let sort = Sort::parse(params.sort.as_deref())?;
        let scope = CursorScope {
            listing: if storefront { "storefront" } else { "catalog" },
            merchant_id,
            sort: sort.as_str(),
            filters: filter.fingerprint(),
        };
        let page = params.page.parse(key, &scope, window)?;
        Ok(Self {
            query: ProductQuery {
                merchant_id,
                storefront,
                filter,
                sort,
                page,
            },
            scope,
        })
    }

    /// What identifies this page's content: listing, sort, filters and page (cursor position or
    /// offset), for cache keys.
    pub fn fingerprint(&self) -> String {
        let (scope, query) = (&self.scope, &self.query);
        format!(
            "{}:{}:{:?}:{:?}",
            scope.listing, scope.sort, query.filter, query.page
        )
    }

    /// The page's JSON, with a cursor to the next page signed with `key`.
    pub fn body(&self, result: PageOf<Product>, key: &CursorKey) -> Vec<u8> {
        let sort = self.query.sort;
        listing_body(
            result.rows,
            result.has_more,
            result.total,
            &self.query.page,
            (key, &self.scope),
            |p| p.position(sort),
        )
    }
}
