//! `sales_report`: the sales CSV of a date range, one row per day and product (day, sku, name,
//! units, revenue_cents) from the orders not cancelled. The rows are read through `Db`, the CSV
//! is built on the blocking pool (off the async runtime), and the report row holds it until
//! `/download` streams it. A run marks the report `running`; a second run rebuilds the same
//! content. After the last attempt fails the report is `failed`.

use crate::jobs::context::{field, retry, JobContext};
use crate::jobs::kinds::SALES_REPORT;
use crate::jobs::outbox::audit;
use crate::store::jobs::{enqueue, NewJob};
use crate::store::transaction::in_transaction;
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::future::LocalBoxFuture;
use rampart_actors::{ClaimedJob, Conn, DbCommand, DbError, JobFailure, JobRunner};
use serde::Serialize;
use std::time::Duration;
use uuid::Uuid;

pub struct SalesReport(pub JobContext);

/// Reading a long range may take a while; the job's lease is renewed meanwhile.
const READ_WITHIN: Duration = Duration::from_secs(120);

impl JobRunner for SalesReport {
    fn run(&self, job: ClaimedJob) -> LocalBoxFuture<'static, Result<(), JobFailure>> {
        let db = self.0.db.clone();
        Box::pin(async move {
            let report_id: Uuid = field(&job, "report_id")?;
            let last = job.attempt >= job.max_attempts;
            let result = async {
                let Some(rows) = db
                    .run_within(Build { report_id }, READ_WITHIN)
                    .await
                    .map_err(retry)?
                else {
                    return Err(JobFailure::Permanent(format!(
                        "report {report_id} not found"
                    )));
                };
                let csv = actix_web::rt::task::spawn_blocking(move || to_csv(&rows))
                    .await
                    .map_err(|e| JobFailure::Retry(format!("building the CSV: {e}")))?;
                db.run(Finish {
                    report_id,
                    outcome: Ok(csv),
                })
                .await
                .map_err(retry)
            }
            .await;
            if let Err(e) = &result {
                if last || matches!(e, JobFailure::Permanent(_)) {
                    let why = match e {
                        JobFailure::Retry(w)
                        | JobFailure::Permanent(w)
                        | JobFailure::Deferred(_, w) => w.clone(),
                    };
                    let _ = db
                        .run(Finish {
                            report_id,
                            outcome: Err(why),
                        })
                        .await;
                }
            }
            result
        })
    }
}

/// One line of the sales CSV.
pub struct Line {
    pub day: NaiveDate,
    pub sku: String,
    pub name: String,
    pub units: i64,
    pub revenue_cents: i64,
}

pub const HEADER: &str = "day,sku,name,units,revenue_cents\n";

pub fn to_csv(lines: &[Line]) -> Vec<u8> {
    let mut out = String::with_capacity(HEADER.len() + lines.len() * 48);
    out.push_str(HEADER);
    for l in lines {
        out.push_str(&format!(
            "{},{},{},{},{}\n",
            l.day,
            cell(&l.sku),
            cell(&l.name),
            l.units,
            l.revenue_cents
        ));
    }
    out.into_bytes()
}

/// A text cell: neutralised, then quoted.
///
/// OWASP CSV injection: a spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` as a
/// formula (tab and carriage return lead to one too), so such a cell gets a leading apostrophe
/// and is shown as text. Then RFC 4180: a field with a comma, quote or line break is quoted, its
/// quotes doubled. (Units and revenue are numbers, never negative: they are written as they are.)
fn cell(field: &str) -> String {
    let neutral = if field.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{field}")
    } else {
        field.to_owned()
    };
    if neutral.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", neutral.replace('"', "\"\""))
    } else {
        neutral
    }
}

/// Marks the report running and reads its lines (`None`: no such report).
struct Build {
    report_id: Uuid,
}

impl DbCommand for Build {
    type Output = Option<Vec<Line>>;

    async fn run(self, conn: &mut Conn) -> Result<Self::Output, DbError> {
        let report = conn
            .query_opt(
                "UPDATE reports SET status = 'running' WHERE id = $1
                 RETURNING merchant_id, from_day, to_day",
                &[&self.report_id],
            )
            .await?;
        let Some(report) = report else {
            return Ok(None);
        };
        let (merchant_id, from, to): (Uuid, NaiveDate, NaiveDate) =
            (report.get(0), report.get(1), report.get(2));
        let rows = conn
            .query(
                "SELECT (o.created_at AT TIME ZONE 'UTC')::date AS day, max(i.sku), max(i.name),
                        sum(i.quantity)::bigint, sum(i.quantity * i.unit_price_cents)::bigint
                 FROM orders o JOIN order_items i ON i.order_id = o.id
                 WHERE o.merchant_id = $1 AND o.status <> 'cancelled'
                   AND o.created_at >= ($2::date)::timestamp AT TIME ZONE 'UTC'
                   AND o.created_at < ($3::date + 1)::timestamp AT TIME ZONE 'UTC'
                 GROUP BY day, i.product_id
                 ORDER BY day, max(i.sku), i.product_id",
                &[&merchant_id, &from, &to],
            )
            .await?;
        Ok(Some(
            rows.iter()
                .map(|r| Line {
                    day: r.get(0),
                    sku: r.get(1),
                    name: r.get(2),
                    units: r.get(3),
                    revenue_cents: r.get(4),
                })
                .collect(),
        ))
    }
}

struct Finish {
    report_id: Uuid,
    outcome: Result<Vec<u8>, String>,
}

impl DbCommand for Finish {
    type Output = ();

    async fn run(self, conn: &mut Conn) -> Result<(), DbError> {
        match self.outcome {
            Ok(csv) => conn
                .execute(
                    "UPDATE reports SET status = 'ready', content = $2, error = NULL, finished_at = now() WHERE id = $1",
                    &[&self.report_id, &csv],
                )
                .await?,
            Err(why) => conn
                .execute(
                    "UPDATE reports SET status = 'failed', error = $2, finished_at = now() WHERE id = $1",
                    &[&self.report_id, &why],
                )
                .await?,
        };
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub id: Uuid,
    pub kind: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub format: String,
    /// queued | running | ready | failed
    pub status: String,
    pub job_id: Uuid,
    pub error: Option<String>,
    /// Present when ready.
    pub download_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

const REPORT_COLUMNS: &str =
    "id, kind, from_day, to_day, format, status, job_id, error, created_at, finished_at";

impl Report {
    fn from_row(r: &tokio_postgres::Row) -> Self {
        let id: Uuid = r.get(0);
        let status: String = r.get(5);
        Self {
            id,
            kind: r.get(1),
            from: r.get(2),
            to: r.get(3),
            format: r.get(4),
            download_url: (status == "ready").then(|| format!("/api/v1/reports/{id}/download")),
            status,
            job_id: r.get(6),
            error: r.get(7),
            created_at: r.get(8),
            finished_at: r.get(9),
        }
    }
}

/// Creates the report and its job in one transaction.
pub struct Create {
    pub merchant_id: Uuid,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub actor: String,
    pub default_attempts: i32,
}

impl DbCommand for Create {
    type Output = Report;

    async fn run(self, conn: &mut Conn) -> Result<Report, DbError> {
        let id = Uuid::now_v7();
        in_transaction(conn, async |tx| {
            let job = NewJob {
                kind: &SALES_REPORT,
                payload: serde_json::json!({"report_id": id}),
                dedup_key: id.to_string(),
                ordering_key: None,
            };
            let audit = audit("report.requested", &self.actor, "report", &id.to_string());
            let ids = enqueue(tx, self.merchant_id, vec![job, audit], self.default_attempts).await?;
            let row = tx
                .query_one(
                    &format!(
                        "INSERT INTO reports (id, merchant_id, kind, from_day, to_day, format, job_id)
                         VALUES ($1, $2, 'sales', $3, $4, 'csv', $5) RETURNING {REPORT_COLUMNS}"
                    ),
                    &[&id, &self.merchant_id, &self.from, &self.to, &ids[0]],
                )
                .await?;
            Ok((Report::from_row(&row), true))
        })
        .await
    }
}

pub struct Get {
    pub merchant_id: Uuid,
    pub id: Uuid,
}

impl DbCommand for Get {
    type Output = Option<Report>;

    async fn run(self, conn: &mut Conn) -> Result<Option<Report>, DbError> {
        Ok(conn
            .query_opt(
                &format!("SELECT {REPORT_COLUMNS} FROM reports WHERE id = $1 AND merchant_id = $2"),
                &[&self.id, &self.merchant_id],
            )
            .await?
            .as_ref()
            .map(Report::from_row))
    }
}

/// A ready report's CSV (`Some(None)`: it exists but is not ready).
pub struct Content {
    pub merchant_id: Uuid,
    pub id: Uuid,
}

impl DbCommand for Content {
    type Output = Option<Option<Vec<u8>>>;

    async fn run(self, conn: &mut Conn) -> Result<Self::Output, DbError> {
        Ok(conn
            .query_opt(
                "SELECT CASE WHEN status = 'ready' THEN content END FROM reports WHERE id = $1 AND merchant_id = $2",
                &[&self.id, &self.merchant_id],
            )
            .await?
            .map(|r| r.get(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::{cell, to_csv, Line, HEADER};

    #[test]
    fn a_cell_that_would_start_a_formula_starts_with_an_apostrophe() {
        for (raw, written) in [
            ("=1+2", "'=1+2"),
            ("+1", "'+1"),
            ("-5", "'-5"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "\"'\rx\""),
            (
                "=HYPERLINK(\"http://x\")",
                "\"'=HYPERLINK(\"\"http://x\"\")\"",
            ),
            ("=a,b", "\"'=a,b\""),
            ("Lamp", "Lamp"),
            ("a=b", "a=b"),
            ("a,\"b\"", "\"a,\"\"b\"\"\""),
            ("", ""),
        ] {
            assert_eq!(cell(raw), written, "{raw:?}");
        }
    }

    #[test]
    fn numbers_are_written_as_they_are() {
        let csv = to_csv(&[Line {
            day: chrono::NaiveDate::from_ymd_opt(2026, 1, 2).unwrap(),
            sku: "+1".into(),
            name: "-x".into(),
            units: 3,
            revenue_cents: 1500,
        }]);
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            format!("{HEADER}2026-01-02,'+1,'-x,3,1500\n")
        );
    }
}
