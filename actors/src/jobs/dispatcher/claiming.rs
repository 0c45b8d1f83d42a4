//! How the dispatcher claims: per queue, as many due jobs as it has free places (one place while
//! the foreground is busy, and then at most one claim per `BUSY_CLAIM_EVERY`), started as runs
//! apart or run in their claim.

use super::recording::UNRECORDED_AT_MOST;
use super::{Finished, Jobs};
use crate::jobs::claim::Claim;
use crate::jobs::effects::EffectRun;
use crate::jobs::in_claim::{RunInClaim, IN_CLAIM_WAIT, SETTLE_WHILE_BUSY};
use crate::jobs::lease::{execute, DB_WAIT};
use crate::jobs::runner::{ClaimedJob, JobRunner};
use actix::fut::WrapFuture;
use actix::{ActorFutureExt, AsyncContext, Context};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How often a queue claims while the foreground is busy: each claim is a planned statement
/// and a transaction, whatever it takes.
const BUSY_CLAIM_EVERY: Duration = Duration::from_millis(250);

impl Jobs {
    pub(super) fn claim_all(&mut self, ctx: &mut Context<Self>) {
        let queues: Vec<String> = self.settings.queues.keys().cloned().collect();
        for queue in queues {
            self.claim(&queue, ctx);
        }
    }

    /// Claims as many due jobs of `queue` as it has free places, unless a claim is under way
    /// (then one more follows it).
    pub(super) fn claim(&mut self, queue: &str, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let Some(&concurrency) = self.settings.queues.get(queue) else {
            return;
        };
        let busy = self.settings.busy.as_ref().is_some_and(|busy| busy());
        let concurrency = if busy { 1 } else { concurrency };
        let running = self.running.get(queue).copied().unwrap_or(0);
        if running >= concurrency {
            return;
        }
        if self.board.unrecorded.load(Relaxed) >= UNRECORDED_AT_MOST {
            self.held_back = true;
            return;
        }
        if let Some(again) = self.claiming.get_mut(queue) {
            *again = true;
            return;
        }
        // While busy, a queue claims at most once per BUSY_CLAIM_EVERY: the jobs of a burst are
        // taken in a few large batches rather than many small ones.
        let now = Instant::now();
        if busy {
            if let Some(at) = self.last_claim.get(queue).map(|at| now.duration_since(*at)) {
                if at < BUSY_CLAIM_EVERY {
                    if self.deferred.insert(queue.to_owned()) {
                        self.arm(queue, true);
                        let queue = queue.to_owned();
                        ctx.run_later(BUSY_CLAIM_EVERY - at, move |act, ctx| {
                            act.deferred.remove(&queue);
                            act.arm(&queue, false);
                            // The commits that found it armed woke nobody, here or elsewhere.
                            act.to_broadcast.insert(queue.clone());
                            act.broadcast(ctx);
                            act.claim(&queue, ctx);
                        });
                    }
                    return;
                }
            }
        }
        self.last_claim.insert(queue.to_owned(), now);
        self.claiming.insert(queue.to_owned(), false);
        if self.in_claim.contains(queue) {
            return self.run_in_claim(queue.to_owned(), busy, ctx);
        }
        let command = Claim {
            queue: queue.to_owned(),
            limit: ((concurrency - running) * self.batch_of(queue)) as i64,
            lease: self.settings.lease,
            instance: self.settings.instance.clone(),
        };
        let db = self.db.clone();
        let queue = queue.to_owned();
        self.board.claims.fetch_add(1, Relaxed);
        ctx.spawn(
            async move { db.run_within(command, DB_WAIT).await }
                .into_actor(self)
                .map(move |claimed, act, ctx| {
                    act.board.claims.fetch_sub(1, Relaxed);
                    let again = act.claiming.remove(&queue).unwrap_or(false);
                    match claimed {
                        Ok(jobs) => act.start_jobs(jobs, ctx),
                        Err(e) => {
                            tracing::warn!(queue = %queue, error = %e, "claiming jobs failed")
                        }
                    }
                    if again {
                        act.claim(&queue, ctx);
                    }
                }),
        );
    }

    /// Starts the claimed jobs: each run (one job, or a batch of one kind) takes one place. A
    /// claim took at most what the free places can run; its batches are shared out among them
    /// (a batch of effects is made one at a time, so one run of all would leave places idle).
    fn start_jobs(&mut self, jobs: Vec<ClaimedJob>, ctx: &mut Context<Self>) {
        let places = jobs.first().map_or(1, |j| {
            let queue = &j.queue;
            let concurrency = self.settings.queues.get(queue).copied().unwrap_or(1);
            let running = self.running.get(queue).copied().unwrap_or(0);
            concurrency.saturating_sub(running).max(1)
        });
        let mut by_kind: BTreeMap<String, Vec<ClaimedJob>> = BTreeMap::new();
        for job in jobs {
            by_kind.entry(job.kind.clone()).or_default().push(job);
        }
        for (kind, mut jobs) in by_kind {
            let runner = self.runners.get(&kind).map(|r| Arc::clone(&r.0));
            let size = runner
                .as_ref()
                .map_or(1, |r| r.batch().max(1))
                .min(jobs.len().div_ceil(places).max(1));
            while !jobs.is_empty() {
                let rest = jobs.split_off(size.min(jobs.len()));
                self.start_run(std::mem::replace(&mut jobs, rest), runner.clone(), ctx);
            }
        }
    }

    fn start_run(
        &mut self,
        jobs: Vec<ClaimedJob>,
        runner: Option<Arc<dyn JobRunner>>,
        ctx: &mut Context<Self>,
    ) {
        let queue = jobs[0].queue.clone();
        self.place_taken(&queue);
        let counters = self.board.counters(&queue).cloned();
        // A run of effects counts each as it starts, and records each itself.
        let effects = runner.as_ref().and_then(|r| r.effects(&jobs));
        if let (Some(c), None) = (&counters, &effects) {
            c.started.fetch_add(jobs.len() as u64, Relaxed);
        }
        let (db, settings, addr) = (self.db.clone(), Arc::clone(&self.settings), ctx.address());
        let halt = Arc::clone(&self.halt);
        let span =
            tracing::info_span!("jobs", kind = %jobs[0].kind, first = %jobs[0].id, n = jobs.len());
        let work = async move {
            if let Some(prepared) = effects {
                let run = EffectRun {
                    db: &db,
                    settings: &settings,
                    halt: &halt,
                    counters,
                };
                run.make(jobs, prepared).await;
                addr.do_send(Finished {
                    queue,
                    outcomes: Vec::new(),
                });
                return;
            }
            let done: Vec<(Uuid, i32)> = jobs.iter().map(|j| (j.id, j.attempt)).collect();
            let outcomes = execute(&db, &settings, runner, jobs).await;
            addr.do_send(Finished {
                queue,
                outcomes: done
                    .into_iter()
                    .zip(outcomes)
                    .map(|((id, attempt), o)| (id, attempt, o))
                    .collect(),
            });
        };
        actix_rt::spawn(tracing::Instrument::instrument(work, span));
    }

    /// Runs a batch of `queue`'s jobs in its claim (the queue's claim is marked under way);
    /// while `busy`, only jobs that have settled ([`SETTLE_WHILE_BUSY`]).
    fn run_in_claim(&mut self, queue: String, busy: bool, ctx: &mut Context<Self>) {
        self.place_taken(&queue);
        let limit = self.batch_of(&queue) as i64;
        let command = RunInClaim {
            queue: queue.clone(),
            limit,
            settled: if busy {
                SETTLE_WHILE_BUSY
            } else {
                std::time::Duration::ZERO
            },
            runners: Arc::clone(&self.runners),
            settings: Arc::clone(&self.settings),
        };
        let db = self.db.clone();
        let span = tracing::info_span!("jobs", queue = %queue, in_claim = true);
        ctx.spawn(
            tracing::Instrument::instrument(
                async move { db.run_within(command, IN_CLAIM_WAIT).await },
                span,
            )
            .into_actor(self)
            .map(move |ran, act, ctx| {
                act.place_freed(&queue);
                let mut again = act.claiming.remove(&queue).unwrap_or(false);
                let counters = act.board.counters(&queue);
                match ran {
                    Ok(outcomes) => {
                        if let Some(c) = counters {
                            c.started.fetch_add(outcomes.len() as u64, Relaxed);
                            outcomes.iter().for_each(|o| c.count(o));
                        }
                        // A full batch: more may be due.
                        again |= outcomes.len() as i64 == limit;
                    }
                    Err(e) => {
                        tracing::warn!(queue = %queue, error = %e, "running jobs in their claim failed")
                    }
                }
                if again {
                    act.claim(&queue, ctx);
                }
            }),
        );
    }
}
