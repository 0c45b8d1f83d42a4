//! The supervision tree: one place lists the children in start order. Later children may depend
//! on earlier ones, so shutdown stops them in reverse.

use crate::admission::Handle;
use crate::stats::{ActorState, ActorStats, StatsSnapshot};
use crate::supervision::{ActorSpec, Resilient, Stop, Supervision};
use actix::{ArbiterHandle, Handler};
use futures_util::future::LocalBoxFuture;
use std::sync::Arc;
use std::time::Duration;

type StopFn = Box<dyn Fn() -> LocalBoxFuture<'static, ()> + Send + Sync>;

struct Child {
    stats: Arc<ActorStats>,
    stop: StopFn,
}

#[derive(Default)]
pub struct Tree {
    children: Vec<Child>,
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a child with the mailbox capacity and restart policy of `spec`, on `arbiter` (its
    /// own thread) or, with `None`, on the current one.
    pub fn start<A, F>(
        &mut self,
        spec: &ActorSpec,
        arbiter: Option<&ArbiterHandle>,
        make: F,
    ) -> Handle<A>
    where
        A: Resilient + Handler<Stop>,
        F: FnOnce(Supervision) -> A + Send + 'static,
    {
        let stats = Arc::new(ActorStats::new(spec.name, spec.mailbox));
        let supervision = Supervision::new(Arc::clone(&stats), spec.restart);
        let capacity = spec.mailbox;
        let build = move |ctx: &mut actix::Context<A>| {
            ctx.set_mailbox_capacity(capacity);
            make(supervision)
        };
        let addr = match arbiter {
            Some(arbiter) => A::start_in_arbiter(arbiter, build),
            None => A::create(build),
        };
        let stop_addr = addr.clone();
        self.children.push(Child {
            stats: Arc::clone(&stats),
            stop: Box::new(move || {
                let addr = stop_addr.clone();
                Box::pin(async move {
                    // Off the request path: `send` may wait for room, bounded by the timeout.
                    let _ = tokio::time::timeout(Duration::from_secs(5), addr.send(Stop)).await;
                })
            }),
        });
        Handle::new(addr, stats, spec.call_deadline)
    }

    pub fn snapshot(&self) -> Vec<StatsSnapshot> {
        self.children.iter().map(|c| c.stats.snapshot()).collect()
    }

    /// Stops every child, last started first.
    pub async fn stop(&self) {
        for child in self.children.iter().rev() {
            (child.stop)().await;
            if child.stats.state() != ActorState::Failed {
                child.stats.set_state(ActorState::Stopped);
            }
            tracing::info!(actor = child.stats.name(), "actor stopped");
        }
    }
}
