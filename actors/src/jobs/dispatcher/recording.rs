//! How the dispatcher records outcomes: in batches (a group commit of whatever finished while
//! the previous write was under way), and no claims while too many wait to be written.

use super::Jobs;
use crate::jobs::lease::DB_WAIT;
use crate::jobs::outcome::Record;
use actix::fut::WrapFuture;
use actix::{ActorFutureExt, AsyncContext, Context};
use std::sync::atomic::Ordering::Relaxed;

/// The most outcomes one write records; the rest go in the writes that follow. A write of
/// whatever finished meanwhile grew with a burst: in bench run 20261202-060757 writes of 10,000
/// outcomes and more ran into the statement timeout and were lost, the next ones were as large,
/// and those jobs ran again once their leases ran out (600-700 no-op jobs/s instead of 4,300 to
/// 5,900, for 70-80 s, in 4 of 11 rounds).
const RECORD_AT_MOST: usize = 1024;
/// No claims while this many outcomes wait to be written: the dispatcher runs no faster than it
/// records (claims resume when the writes catch up, at the latest at the next poll).
pub(super) const UNRECORDED_AT_MOST: u64 = 4 * RECORD_AT_MOST as u64;

impl Jobs {
    /// Writes the outcomes gathered so far (up to [`RECORD_AT_MOST`]) in one statement, unless
    /// a write is under way: the outcomes that finish meanwhile go in the next one (a group
    /// commit). A job's place is free as soon as its outcome is here; its row says `running`
    /// until the write, which nobody else can take before its lease runs out.
    pub(super) fn record(&mut self, ctx: &mut Context<Self>) {
        if self.recording || self.outcomes.is_empty() {
            return;
        }
        self.recording = true;
        let take = self.outcomes.len().min(RECORD_AT_MOST);
        let batch: Vec<_> = self.outcomes.drain(..take).collect();
        let command = Record {
            instance: self.settings.instance.clone(),
            outcomes: batch
                .iter()
                .map(|(_, id, attempt, o)| (*id, *attempt, o.clone()))
                .collect(),
        };
        let db = self.db.clone();
        ctx.spawn(
            async move { db.run_within(command, DB_WAIT).await }
                .into_actor(self)
                .map(move |recorded, act, ctx| {
                    act.recording = false;
                    act.board.unrecorded.fetch_sub(batch.len() as u64, Relaxed);
                    match recorded {
                        Ok(ids) => {
                            for (queue, id, _, outcome) in &batch {
                                let Some(c) = act.board.counters(queue) else { continue };
                                if ids.contains(id) {
                                    c.count(outcome);
                                } else {
                                    c.lease_lost.fetch_add(1, Relaxed);
                                }
                            }
                        }
                        // Not written again: the runners' writes commit without waiting for the
                        // flush, and a failure may be the crash that lost them (a later write
                        // would mark done what no longer is). The rows stay `running`: their
                        // leases run out and they run again.
                        Err(e) => tracing::warn!(jobs = batch.len(), error = %e, "recording job outcomes failed"),
                    }
                    act.record(ctx);
                    if act.held_back && act.board.unrecorded.load(Relaxed) < UNRECORDED_AT_MOST {
                        act.held_back = false;
                        act.claim_all(ctx);
                    }
                }),
        );
    }
}
