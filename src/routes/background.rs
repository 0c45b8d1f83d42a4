//! API.md's "Background work": reports, sales analytics, jobs, the audit trail and the
//! merchant's own settings. Every id is the calling merchant's: another merchant's is a 404.

use crate::domain::listing::{listing_body, CursorScope, Listing, PageParams};
use crate::domain::merchant::{MerchantName, WebhookUrl};
use crate::error::{ApiError, FieldError};
use crate::http::{Json, MerchantAuth};
use crate::jobs::analytics::{Sales, SalesDay};
use crate::jobs::kinds::{AUDIT, SALES_REPORT};
use crate::jobs::outbox::outbox;
use crate::jobs::reports::{self, Report};
use crate::routes::support::path_id;
use crate::state::AppState;
use crate::store::audit::{self, AuditEntry};
use crate::store::jobs::{GetJob, JobView};
use crate::store::merchants::{Merchant, Update};
use actix_web::http::header;
use actix_web::{web, HttpResponse};
use chrono::NaiveDate;
use serde::{Deserialize, Deserializer, Serialize};

/// A day from 1970 to 2199 (the schema's pattern says the same): the analytics answer one row
/// per day of a range, so the years a day may name bound a range's length.
fn day(field: &str, raw: &str) -> Result<NaiveDate, FieldError> {
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .ok()
        .filter(|d| raw.len() == 10 && (1970..2200).contains(&chrono::Datelike::year(d)))
        .ok_or_else(|| FieldError::new(field, "must be a date YYYY-MM-DD from 1970 to 2199"))
}

/// `from` and `to` as an inclusive range of UTC days (malformed: the fields that are).
fn range(from: &str, to: &str) -> Result<(NaiveDate, NaiveDate), Vec<FieldError>> {
    match (day("from", from), day("to", to)) {
        (Ok(f), Ok(t)) => Ok((f, t)),
        (f, t) => Err([f.err(), t.err()].into_iter().flatten().collect()),
    }
}

/// Well-formed days in order: `from` after `to` names both fields (a 422, for reports and
/// analytics alike).
fn ordered((from, to): (NaiveDate, NaiveDate)) -> Result<(NaiveDate, NaiveDate), Vec<FieldError>> {
    if from > to {
        Err(vec![
            FieldError::new("from", format!("must not be after to ({to})")),
            FieldError::new("to", format!("must not be before from ({from})")),
        ])
    } else {
        Ok((from, to))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportBody {
    /// Only `sales`.
    #[schema(pattern = "^sales$")]
    kind: String,
    /// First day (UTC, inclusive), 1970 to 2199.
    #[schema(value_type = String, format = Date, pattern = r"^(19[7-9][0-9]|2[01][0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")]
    from: String,
    /// Last day (UTC, inclusive), 1970 to 2199; before `from` is 422.
    #[schema(value_type = String, format = Date, pattern = r"^(19[7-9][0-9]|2[01][0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")]
    to: String,
    /// Only `csv` (the default).
    #[serde(default)]
    #[schema(pattern = "^csv$")]
    format: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/reports", tag = "background", operation_id = "createReport",
    request_body = ReportBody,
    responses((status = 202, body = Report, description = "queued; poll the Location", headers(("Location" = String)),
            links(("GetReport" = (operation_id = "getReport", parameters(("id" = "$response.body#/id")))),
                ("GetJob" = (operation_id = "getJob", parameters(("id" = "$response.body#/job_id")))))),
        (status = 400, response = crate::routes::responses::BadRequest), (status = 401, response = crate::routes::responses::Unauthorized),
        (status = 413, response = crate::routes::responses::PayloadTooLarge), (status = 415, response = crate::routes::responses::UnsupportedMediaType),
        (status = 422, response = crate::routes::responses::Unprocessable), (status = 503, response = crate::routes::responses::Unavailable)),
    security(("api_key" = [])))]
pub async fn create_report(
    auth: MerchantAuth,
    state: web::Data<AppState>,
    Json(body): Json<ReportBody>,
) -> Result<HttpResponse, ApiError> {
    let mut errors = Vec::new();
    if body.kind != "sales" {
        errors.push(FieldError::new("kind", "must be sales"));
    }
    if body.format.as_deref().is_some_and(|f| f != "csv") {
        errors.push(FieldError::new("format", "must be csv"));
    }
    let dates = range(&body.from, &body.to)
        .and_then(ordered)
        .map_err(|e| errors.extend(e))
        .ok();
    let Some((from, to)) = dates.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let report = state
        .db
        .run(reports::Create {
            merchant_id: auth.merchant_id,
            from,
            to,
            actor: "merchant".into(),
            default_attempts: state.settings.jobs.max_attempts as i32,
        })
        .await?;
    state.wake_jobs(&[&SALES_REPORT, &AUDIT]);
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/api/v1/reports/{}", report.id)))
        .json(report))
}

#[utoipa::path(get, path = "/api/v1/reports/{id}", tag = "background", operation_id = "getReport", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = Report), (status = 401, response = crate::routes::responses::Unauthorized),
        (status = 404, response = crate::routes::responses::NotFound), (status = 503, response = crate::routes::responses::Unavailable)),
    security(("api_key" = [])))]
pub async fn get_report(
    auth: MerchantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id)?;
    let report = state
        .db
        .run(reports::Get {
            merchant_id: auth.merchant_id,
            id,
        })
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(report))
}

/// Chunks the CSV is streamed in.
const CHUNK: usize = 64 * 1024;

#[utoipa::path(get, path = "/api/v1/reports/{id}/download", tag = "background", operation_id = "downloadReport", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, description = "day,sku,name,units,revenue_cents", body = String, content_type = "text/csv"),
        (status = 401, response = crate::routes::responses::Unauthorized), (status = 404, response = crate::routes::responses::NotFound),
        (status = 409, description = "the report is not ready", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, response = crate::routes::responses::Unavailable)),
    security(("api_key" = [])))]
pub async fn download_report(
    auth: MerchantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id)?;
    let csv = state
        .db
        .run(reports::Content {
            merchant_id: auth.merchant_id,
            id,
        })
        .await?
        .ok_or(ApiError::NotFound)?
        .ok_or(ApiError::Conflict {
            kind: "report-not-ready",
            title: "Report not ready",
            detail: "the report is not ready yet: poll it until its status is ready".into(),
        })?;
    let csv = web::Bytes::from(csv);
    let chunks = (0..csv.len().div_ceil(CHUNK)).map(move |i| {
        Ok::<_, std::convert::Infallible>(csv.slice(i * CHUNK..((i + 1) * CHUNK).min(csv.len())))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"sales-{id}.csv\""),
        ))
        .streaming(futures_util::stream::iter(chunks)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SalesParams {
    /// First day (UTC, inclusive), `YYYY-MM-DD`, 1970 to 2199.
    #[param(value_type = String, format = Date, required, pattern = r"^(19[7-9][0-9]|2[01][0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")]
    from: Option<String>,
    /// Last day (UTC, inclusive), `YYYY-MM-DD`, 1970 to 2199; before `from` is 422.
    #[param(value_type = String, format = Date, required, pattern = r"^(19[7-9][0-9]|2[01][0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")]
    to: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SalesBody {
    /// One row per day of the range, zeros on days without sales.
    data: Vec<SalesDay>,
}

#[utoipa::path(get, path = "/api/v1/analytics/sales", tag = "background", operation_id = "salesAnalytics",
    params(SalesParams),
    responses((status = 200, body = SalesBody), (status = 400, response = crate::routes::responses::BadRequest),
        (status = 401, response = crate::routes::responses::Unauthorized),
        (status = 422, response = crate::routes::responses::Unprocessable), (status = 503, response = crate::routes::responses::Unavailable)),
    security(("api_key" = [])))]
pub async fn sales(
    auth: MerchantAuth,
    state: web::Data<AppState>,
    params: web::Query<SalesParams>,
) -> Result<HttpResponse, ApiError> {
    let (Some(from), Some(to)) = (&params.from, &params.to) else {
        return Err(ApiError::bad_request("from and to are required"));
    };
    let (from, to) = range(from, to).map_err(|errors| ApiError::BadRequest {
        detail: errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        errors,
    })?;
    let (from, to) = ordered((from, to)).map_err(ApiError::Validation)?;
    let data = state
        .db
        .run(Sales {
            merchant_id: auth.merchant_id,
            from,
            to,
        })
        .await?;
    Ok(HttpResponse::Ok().json(SalesBody { data }))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "background", operation_id = "getJob", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = JobView), (status = 401, response = crate::routes::responses::Unauthorized),
        (status = 404, response = crate::routes::responses::NotFound), (status = 503, response = crate::routes::responses::Unavailable)),
    security(("api_key" = [])))]
pub async fn get_job(
    auth: MerchantAuth,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&id)?;
    let job = state
        .db
        .run(GetJob {
            merchant_id: auth.merchant_id,
            id,
        })
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(job))
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "background", operation_id = "listAudit",
    params(PageParams),
    responses((status = 200, body = Listing<AuditEntry>, description = "newest first"), (status = 400, response = crate::routes::responses::BadRequest),
        (status = 401, response = crate::routes::responses::Unauthorized), (status = 503, response = crate::routes::responses::Unavailable)),
    security(("api_key" = [])))]
pub async fn audit(
    auth: MerchantAuth,
    state: web::Data<AppState>,
    params: web::Query<PageParams>,
) -> Result<HttpResponse, ApiError> {
    let scope = CursorScope {
        listing: "audit",
        merchant_id: auth.merchant_id,
        sort: "-at",
        filters: String::new(),
    };
    let page = params.parse(&state.cursor_key, &scope, &state.settings.pagination)?;
    let result = state
        .db
        .run(audit::List {
            merchant_id: auth.merchant_id,
            page: page.clone(),
        })
        .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(listing_body(
            result.rows,
            result.has_more,
            result.total,
            &page,
            (&state.cursor_key, &scope),
            AuditEntry::position,
        )))
}

/// `null` and absent differ: absent keeps the value, `null` removes it.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// At least one field.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MerchantBody {
    /// 1 to 200 characters after trimming, no control characters.
    #[serde(default)]
    #[schema(
        max_length = 200,
        pattern = r"^\s*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    name: Option<String>,
    /// http or https, not pointing at an internal address; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 2048, nullable)]
    webhook_url: Option<Option<String>>,
}

#[utoipa::path(put, path = "/api/v1/merchant", tag = "background", operation_id = "updateMerchant",
    request_body = MerchantBody,
    responses((status = 200, body = Merchant), (status = 400, response = crate::routes::responses::BadRequest),
        (status = 401, response = crate::routes::responses::Unauthorized), (status = 413, response = crate::routes::responses::PayloadTooLarge),
        (status = 415, response = crate::routes::responses::UnsupportedMediaType),
        (status = 422, description = "invalid name, or a webhook URL that is not http(s) or reaches an internal address", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, response = crate::routes::responses::Unavailable)),
    security(("api_key" = [])))]
pub async fn update_merchant(
    auth: MerchantAuth,
    state: web::Data<AppState>,
    Json(body): Json<MerchantBody>,
) -> Result<HttpResponse, ApiError> {
    let allow = state.settings.webhooks.allow_private_targets;
    if body.name.is_none() && body.webhook_url.is_none() {
        return Err(ApiError::invalid("body", "must change at least one field"));
    }
    let mut errors = Vec::new();
    let name = match &body.name {
        Some(n) => MerchantName::parse("name", n)
            .map_err(|e| errors.push(e))
            .ok()
            .map(|n| n.as_str().to_owned()),
        None => None,
    };
    let url = match &body.webhook_url {
        Some(Some(raw)) => match WebhookUrl::parse("webhook_url", raw, allow) {
            Ok(url) => match url.check_resolved("webhook_url", allow).await {
                Ok(()) => Some(Some(url.as_str().to_owned())),
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
            Err(e) => {
                errors.push(e);
                None
            }
        },
        Some(None) => Some(None),
        None => None,
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let merchant = state
        .db
        .run(Update {
            merchant_id: auth.merchant_id,
            name,
            webhook_url: url,
            outbox: outbox(&state.settings),
        })
        .await?
        .ok_or(ApiError::NotFound)?;
    state.wake_jobs(&[&AUDIT]);
    Ok(HttpResponse::Ok().json(merchant))
}
