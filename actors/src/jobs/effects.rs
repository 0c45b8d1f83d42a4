//! Runs whose work is an external effect per job (a mail, [`JobRunner::effects`]): the jobs are
//! claimed under a committed lease like any run apart, then their effects are made one at a
//! time, outside any transaction, each outcome recorded in a short transaction of its own before
//! the next effect starts. What that gives:
//!
//! - **Nothing to roll back.** The claim has committed before the first effect, and an effect
//!   is never undone by a later rollback: a run in its claim sent mails inside a transaction
//!   that a drain, a session PostgreSQL ended, or a killed instance rolled back, claim and
//!   attempt included, so the same mails went out again.
//! - **A graceful stop repeats nothing.** Once the dispatcher stops, a run starts no more
//!   effects: the one in flight finishes (within the drain), its outcome is recorded, and the
//!   jobs not started are handed back by the dispatcher's release without spending an attempt.
//! - **A crash repeats at most the effect in flight** of each run (every earlier outcome is
//!   recorded), and the runner gives each effect a stable id (a mail's Message-ID is its job's).
//! - **A lease surely held.** Renewed every third of it while the run lasts; an effect starts
//!   only while the lease was renewed within it and its job is still the run's. A run whose
//!   renewals fail (a lost session) or whose jobs were taken back stops, and what it had not
//!   started comes back when its lease runs out.
//!
//! [`JobRunner::effects`]: super::runner::JobRunner::effects

use super::board::QueueCounters;
use super::lease::{Renew, DB_WAIT};
use super::outcome::{outcome, Record};
use super::runner::{ClaimedJob, Effect, JobFailure};
use super::settings::JobsSettings;
use crate::admission::Handle;
use crate::db::Db;
use futures_util::future::LocalBoxFuture;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

/// One run of effects: what it needs besides its jobs.
pub(super) struct EffectRun<'a> {
    pub(super) db: &'a Handle<Db>,
    pub(super) settings: &'a JobsSettings,
    /// Set when the dispatcher stops: no effect starts after it.
    pub(super) halt: &'a AtomicBool,
    pub(super) counters: Option<Arc<QueueCounters>>,
}

impl EffectRun<'_> {
    /// Prepares `jobs`' effects (`prepared`), records those settled, then makes the others one
    /// at a time, each recorded before the next; the lease renewed meanwhile.
    pub(super) async fn make(
        &self,
        jobs: Vec<ClaimedJob>,
        prepared: LocalBoxFuture<'static, Vec<Effect>>,
    ) {
        let started = Instant::now();
        // The claim committed just before this run began; until a renewal says more, the lease
        // is counted from half of it.
        let sure_until = Cell::new(started + self.settings.lease / 2);
        let held: RefCell<Vec<(Uuid, i32)>> =
            RefCell::new(jobs.iter().map(|j| (j.id, j.attempt)).collect());
        let taken_back: RefCell<HashSet<Uuid>> = RefCell::default();
        let run = async {
            let mut effects = prepared.await.into_iter();
            let (mut settled, mut pending) = (Vec::new(), Vec::new());
            for job in &jobs {
                match effects.next() {
                    Some(Effect::Settled(result)) => settled.push((job, result)),
                    Some(Effect::Pending(effect)) => pending.push((job, effect)),
                    None => settled.push((
                        job,
                        Err(JobFailure::Retry(
                            "the runner prepared no effect for this job".into(),
                        )),
                    )),
                }
            }
            if !settled.is_empty() {
                if let Some(c) = &self.counters {
                    c.started.fetch_add(settled.len() as u64, Relaxed);
                }
                if !self.record(settled, &held).await {
                    return;
                }
            }
            for (job, effect) in pending {
                if self.halt.load(SeqCst) {
                    // Handed back by the dispatcher's release, no attempt spent.
                    return;
                }
                if Instant::now() >= sure_until.get() || taken_back.borrow().contains(&job.id) {
                    tracing::warn!(job = %job.id, "the lease is not surely held: the run stops");
                    return;
                }
                if let Some(c) = &self.counters {
                    c.started.fetch_add(1, Relaxed);
                }
                let result = effect.await;
                if !self.record(vec![(job, result)], &held).await {
                    return;
                }
            }
        };
        let renew = async {
            let mut every = tokio::time::interval(self.settings.lease / 3);
            every.tick().await;
            loop {
                every.tick().await;
                let jobs = held.borrow().clone();
                if jobs.is_empty() {
                    continue;
                }
                let at = Instant::now();
                let renew = Renew {
                    held: jobs.clone(),
                    lease: self.settings.lease,
                    instance: self.settings.instance.clone(),
                };
                match self.db.run_within(renew, DB_WAIT).await {
                    Ok(renewed) => {
                        sure_until.set(at + self.settings.lease);
                        // Not renewed, and not recorded meanwhile either.
                        let still = held.borrow();
                        let lost: Vec<Uuid> = jobs
                            .iter()
                            .map(|(id, _)| *id)
                            .filter(|id| !renewed.contains(id))
                            .filter(|id| still.iter().any(|(h, _)| h == id))
                            .collect();
                        drop(still);
                        if !lost.is_empty() {
                            tracing::warn!(jobs = lost.len(), "job leases lost while running");
                            taken_back.borrow_mut().extend(lost);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing job leases failed"),
                }
            }
        };
        tokio::select! {
            () = run => {}
            _ = renew => unreachable!("the renewal loop never ends"),
        }
    }

    /// Records the outcomes of `results` (each while its job is still this run's), counted on
    /// the board; whether the write went through.
    async fn record(
        &self,
        results: Vec<(&ClaimedJob, Result<(), JobFailure>)>,
        held: &RefCell<Vec<(Uuid, i32)>>,
    ) -> bool {
        let outcomes: Vec<_> = results
            .into_iter()
            .map(|(job, result)| {
                let o = outcome(self.settings, job.id, job.attempt, job.max_attempts, result);
                (job.id, job.attempt, o)
            })
            .collect();
        let command = Record {
            instance: self.settings.instance.clone(),
            outcomes: outcomes.clone(),
        };
        match self.db.run_within(command, DB_WAIT).await {
            Ok(written) => {
                held.borrow_mut()
                    .retain(|(id, _)| !outcomes.iter().any(|(o, _, _)| o == id));
                if let Some(c) = &self.counters {
                    for (id, _, o) in &outcomes {
                        if written.contains(id) {
                            c.count(o);
                        } else {
                            c.lease_lost.fetch_add(1, Relaxed);
                        }
                    }
                }
                true
            }
            Err(e) => {
                // Not written again (see `recording`): the jobs' leases run out and they run
                // again, their effects with the same ids.
                tracing::warn!(jobs = outcomes.len(), error = %e, "recording job outcomes failed");
                false
            }
        }
    }
}
