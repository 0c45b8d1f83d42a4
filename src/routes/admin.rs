//! `POST /api/v1/admin/merchants`: creates a merchant and shows its API key once.

use crate::domain::merchant::NewMerchant;
use crate::error::ApiError;
use crate::http::{AdminAuth, Json};
use crate::state::AppState;
use crate::store::merchants::{self, CreatedMerchant};
use actix_web::{web, HttpResponse};
use serde::Deserialize;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMerchantBody {
    name: String,
    #[serde(default)]
    webhook_url: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/admin/merchants", tag = "admin",
    request_body = CreateMerchantBody,
    responses((status = 201, body = CreatedMerchant), (status = 401), (status = 422)),
    security(("admin_token" = [])))]
pub async fn create_merchant(
    _: AdminAuth,
    state: web::Data<AppState>,
    Json(body): Json<CreateMerchantBody>,
) -> Result<HttpResponse, ApiError> {
    let input = NewMerchant::parse(
        &body.name,
        body.webhook_url.as_deref(),
        state.settings.webhooks.allow_private_targets,
    )?;
    let created = merchants::create(&state.db, input).await?;
    Ok(HttpResponse::Created().json(created))
}
