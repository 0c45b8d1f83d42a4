//! `DbProbe`: owns one connection of its own, outside the pool, for readiness and the figures
//! ops read; a busy `Db` must not make the instance look unready.

use super::error::DbError;
use crate::admission::{serve_call, Caller, Envelope, Handle, Reply, Request};
use crate::crash::crashable;
use crate::supervision::{Resilient, Stop, Supervision};
use actix::fut::WrapFuture;
use actix::{Actor, Context, Handler};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_postgres::NoTls;

/// `DbProbe`: owns one connection of its own, outside the pool, for readiness.
///
/// Messages: [`Ping`] → `Result<Duration, DbError>` (`SELECT 1` and its round trip);
/// [`Probe<Q>`] for any [`ProbeQuery`] `Q` → `Result<Q::Output, DbError>`. Mailbox: small; only
/// ops endpoints write to it. The connection is made on first use and again after
/// it breaks, each time within the caller's deadline. A panic (none is expected) drops the
/// connection. Pings run one at a time: a probe needs no concurrency.
pub struct DbProbe {
    pg: tokio_postgres::Config,
    client: Arc<Mutex<Option<tokio_postgres::Client>>>,
    supervision: Supervision,
}

impl DbProbe {
    pub fn new(pg: tokio_postgres::Config, supervision: Supervision) -> Self {
        Self {
            pg,
            client: Arc::new(Mutex::new(None)),
            supervision,
        }
    }
}

impl Actor for DbProbe {
    type Context = Context<Self>;
}

impl Resilient for DbProbe {
    fn supervision(&mut self) -> &mut Supervision {
        &mut self.supervision
    }

    fn rebuild(&mut self, _ctx: &mut Context<Self>) {
        self.client = Arc::new(Mutex::new(None));
    }
}

impl Handler<Stop> for DbProbe {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        use actix::ActorContext;
        ctx.stop();
    }
}

/// `SELECT 1` on the probe's own connection.
pub struct Ping;

impl Request for Ping {
    type Reply = Result<Duration, DbError>;
}

/// The probe's connection, made again when it broke, within the caller's deadline.
async fn probe_client(
    pg: &tokio_postgres::Config,
    slot: &Arc<Mutex<Option<tokio_postgres::Client>>>,
    deadline: tokio::time::Instant,
) -> Result<tokio::sync::OwnedMutexGuard<Option<tokio_postgres::Client>>, DbError> {
    let mut held = tokio::time::timeout_at(deadline, Arc::clone(slot).lock_owned())
        .await
        .map_err(|_| DbError::Timeout)?;
    if held.as_ref().is_none_or(|c| c.is_closed()) {
        let (client, connection) = tokio::time::timeout_at(deadline, pg.connect(NoTls))
            .await
            .map_err(|_| DbError::Timeout)??;
        actix_rt::spawn(async move {
            let _ = connection.await;
        });
        *held = Some(client);
    }
    Ok(held)
}

/// Runs `work` on the probe's connection within the deadline; a connection that failed or did
/// not answer in time may be dead, so the next probe makes a new one.
async fn on_probe<T>(
    pg: tokio_postgres::Config,
    slot: Arc<Mutex<Option<tokio_postgres::Client>>>,
    caller: Caller,
    work: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
) -> Result<T, DbError> {
    let deadline = caller.deadline();
    let mut held = probe_client(&pg, &slot, deadline).await?;
    let Some(client) = held.as_ref() else {
        return Err(DbError::Unavailable("no probe connection".into()));
    };
    match tokio::time::timeout_at(deadline, work(client)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            *held = None;
            Err(e.into())
        }
        Err(_) => {
            *held = None;
            Err(DbError::Timeout)
        }
    }
}

async fn ping(
    pg: tokio_postgres::Config,
    slot: Arc<Mutex<Option<tokio_postgres::Client>>>,
    caller: Caller,
) -> Result<Duration, DbError> {
    let started = tokio::time::Instant::now();
    on_probe(pg, slot, caller, async |client| {
        client.simple_query("SELECT 1").await.map(|_| ())
    })
    .await?;
    Ok(started.elapsed())
}

/// A read on the probe's own connection: figures that ops must get without queueing behind
/// requests in `Db`, defined by the side that needs them (the job queues' health, say).
pub trait ProbeQuery: Send + 'static {
    type Output: Send + 'static;
    fn run(
        self,
        client: &tokio_postgres::Client,
    ) -> impl Future<Output = Result<Self::Output, tokio_postgres::Error>>;
}

/// Runs a [`ProbeQuery`] on the probe's connection.
pub struct Probe<Q>(pub Q);

impl<Q: ProbeQuery> Request for Probe<Q> {
    type Reply = Result<Q::Output, DbError>;
}

impl<Q: ProbeQuery> Handler<Envelope<Probe<Q>>> for DbProbe {
    type Result = ();

    fn handle(&mut self, envelope: Envelope<Probe<Q>>, ctx: &mut Context<Self>) {
        serve_call(self, ctx, envelope, |probe, Probe(query), caller, _| {
            let work = on_probe(
                probe.pg.clone(),
                Arc::clone(&probe.client),
                caller,
                async move |client| query.run(client).await,
            );
            Reply::Spawn(Box::pin(work.into_actor(probe)))
        });
    }
}

impl Handler<Envelope<Ping>> for DbProbe {
    type Result = ();

    fn handle(&mut self, envelope: Envelope<Ping>, ctx: &mut Context<Self>) {
        serve_call(self, ctx, envelope, |probe, Ping, caller, _| {
            let work = ping(probe.pg.clone(), Arc::clone(&probe.client), caller);
            Reply::Spawn(Box::pin(work.into_actor(probe)))
        });
    }
}

impl Handle<DbProbe> {
    /// Pings PostgreSQL within `within`; the round trip on success.
    pub async fn ping(&self, within: Duration) -> Result<Duration, DbError> {
        self.call_within(Ping, within).await?
    }

    /// Runs `query` on the probe's connection within `within`.
    pub async fn probe<Q: ProbeQuery>(
        &self,
        query: Q,
        within: Duration,
    ) -> Result<Q::Output, DbError> {
        self.call_within(Probe(query), within).await?
    }
}

crashable!(DbProbe);
