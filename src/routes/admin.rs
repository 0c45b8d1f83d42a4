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
    /// 1 to 200 characters after trimming, no control characters.
    #[schema(
        max_length = 200,
        pattern = r"^\s*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    name: String,
    /// http or https; refused when it points at a loopback, private or link-local address.
    #[serde(default)]
    #[schema(
        max_length = 2048,
        pattern = r"^https?://[^\s\u0000-\u001F\u007F-\u009F/?#@:\[][^\s\u0000-\u001F\u007F-\u009F/?#@]*([/?#][^\s\u0000-\u001F\u007F-\u009F]*)?$",
        nullable
    )]
    webhook_url: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/admin/merchants", tag = "admin", operation_id = "createMerchant",
    request_body = CreateMerchantBody,
    responses((status = 201, body = CreatedMerchant), (status = 400, response = crate::routes::responses::BadRequest), (status = 401, response = crate::routes::responses::Unauthorized), (status = 413, response = crate::routes::responses::PayloadTooLarge), (status = 415, response = crate::routes::responses::UnsupportedMediaType),
        (status = 422, description = "invalid name, or a webhook URL that is not http(s) or points at a private address", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, response = crate::routes::responses::Unavailable)),
    security(("admin_token" = [])))]
pub async fn create_merchant(
    _: AdminAuth,
    state: web::Data<AppState>,
    Json(body): Json<CreateMerchantBody>,
) -> Result<HttpResponse, ApiError> {
    let allow = state.settings.webhooks.allow_private_targets;
    let input = NewMerchant::parse(&body.name, body.webhook_url.as_deref(), allow)?;
    input.check_resolved(allow).await?;
    let created = merchants::create(&state.db, input).await?;
    Ok(HttpResponse::Created().json(created))
}
