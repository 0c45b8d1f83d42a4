//! The actor toolkit against its contract: bounded admission, panic isolation, restart intensity.

use actix::fut::WrapFuture;
use actix::{Actor, ActorContext, Arbiter, Context, Handler};
use rampart_actors::{
    serve, serve_call, with_deadline, ActorSpec, ActorState, CallError, Envelope, Handle, Reply,
    Request, Resilient, RestartPolicy, Stop, Supervision, Tree,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// An actor whose `Hold` message blocks its mailbox until the gate opens.
struct Gatekeeper {
    gate: watch::Receiver<bool>,
    generation: Arc<AtomicU32>,
    supervision: Supervision,
}

impl Actor for Gatekeeper {
    type Context = Context<Self>;
}

impl Resilient for Gatekeeper {
    fn supervision(&mut self) -> &mut Supervision {
        &mut self.supervision
    }
    fn rebuild(&mut self, _: &mut Context<Self>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Handler<Stop> for Gatekeeper {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Blocks the actor; tells the test through the channel once it holds the mailbox.
struct Hold(tokio::sync::oneshot::Sender<()>);
impl Request for Hold {
    type Reply = ();
}
impl Handler<Envelope<Hold>> for Gatekeeper {
    type Result = ();
    fn handle(&mut self, env: Envelope<Hold>, ctx: &mut Context<Self>) {
        serve(self, ctx, env, |act, Hold(holding), _| {
            let _ = holding.send(());
            let mut gate = act.gate.clone();
            Reply::Wait(Box::pin(
                async move {
                    let _ = gate.wait_for(|open| *open).await;
                }
                .into_actor(act),
            ))
        });
    }
}

struct Work(u32);
impl Request for Work {
    type Reply = u32;
}
impl Handler<Envelope<Work>> for Gatekeeper {
    type Result = ();
    fn handle(&mut self, env: Envelope<Work>, ctx: &mut Context<Self>) {
        serve(self, ctx, env, |_, Work(n), _| Reply::Ready(n));
    }
}

struct Explode;
impl Request for Explode {
    type Reply = ();
}
impl Handler<Envelope<Explode>> for Gatekeeper {
    type Result = ();
    fn handle(&mut self, env: Envelope<Explode>, ctx: &mut Context<Self>) {
        serve(self, ctx, env, |_, Explode, _| panic!("boom"));
    }
}

struct ExplodeLater;
impl Request for ExplodeLater {
    type Reply = ();
}
impl Handler<Envelope<ExplodeLater>> for Gatekeeper {
    type Result = ();
    fn handle(&mut self, env: Envelope<ExplodeLater>, ctx: &mut Context<Self>) {
        serve(self, ctx, env, |act, ExplodeLater, _| {
            Reply::Spawn(Box::pin(
                async {
                    tokio::task::yield_now().await;
                    panic!("boom after an await");
                }
                .into_actor(act),
            ))
        });
    }
}

/// A write that takes `work` long; it asks for the point of no return after `commit_after`.
/// Replies whether it committed.
struct Write {
    commit_after: Duration,
    work: Duration,
}
impl Request for Write {
    type Reply = bool;
}
impl Handler<Envelope<Write>> for Gatekeeper {
    type Result = ();
    fn handle(&mut self, env: Envelope<Write>, ctx: &mut Context<Self>) {
        serve_call(self, ctx, env, |act, write, caller, _| {
            Reply::Spawn(Box::pin(
                async move {
                    tokio::time::sleep(write.commit_after).await;
                    let committed = caller.commit();
                    tokio::time::sleep(write.work).await;
                    committed
                }
                .into_actor(act),
            ))
        });
    }
}

fn start(
    capacity: usize,
    policy: RestartPolicy,
    arbiter: &Arbiter,
) -> (
    Tree,
    Handle<Gatekeeper>,
    watch::Sender<bool>,
    Arc<AtomicU32>,
) {
    let (open, gate) = watch::channel(false);
    let generation = Arc::new(AtomicU32::new(0));
    let mut tree = Tree::new();
    let spec = ActorSpec::new("gatekeeper")
        .mailbox(capacity)
        .restart(policy)
        .call_deadline(Duration::from_secs(10));
    let g = Arc::clone(&generation);
    let handle = tree.start(&spec, Some(&arbiter.handle()), move |supervision| {
        Gatekeeper {
            gate,
            generation: g,
            supervision,
        }
    });
    (tree, handle, open, generation)
}

/// Blocks the actor and returns once it is holding its mailbox.
async fn hold(actor: &Handle<Gatekeeper>) -> actix_rt::task::JoinHandle<Result<(), CallError>> {
    let (holding, held) = tokio::sync::oneshot::channel();
    let actor = actor.clone();
    let holder = actix_rt::spawn(async move { actor.call(Hold(holding)).await });
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("actor takes Hold")
        .expect("held");
    holder
}

#[actix_rt::test]
async fn a_blocked_actor_with_capacity_16_holds_about_16_and_refuses_the_rest_at_once() {
    let arbiter = Arbiter::new();
    let (_tree, actor, open, _) = start(16, RestartPolicy::default(), &arbiter);
    let holder = hold(&actor).await;
    let (results, mut answers) = mpsc::unbounded_channel();
    for i in 0..1000u32 {
        let actor = actor.clone();
        let results = results.clone();
        actix_rt::spawn(async move {
            let _ = results.send(actor.call(Work(i)).await);
        });
    }
    drop(results);

    // While the gate is shut, only refusals can arrive, and they arrive without waiting.
    let mut refused = 0;
    while refused < 1000 - 18 {
        let answer = tokio::time::timeout(Duration::from_secs(5), answers.recv())
            .await
            .expect("refusals arrive at once")
            .expect("channel open");
        assert_eq!(
            answer,
            Err(CallError::Overloaded),
            "only refusals before the gate opens"
        );
        refused += 1;
    }
    let queued = actor.stats().mailbox_depth();
    assert!(queued <= 18, "at most about 16 queued, saw {queued}");

    open.send(true).expect("open the gate");
    let mut served = 0;
    while let Some(answer) = tokio::time::timeout(Duration::from_secs(10), answers.recv())
        .await
        .expect("answers")
    {
        match answer {
            Ok(_) => served += 1,
            Err(CallError::Overloaded) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(holder.await.expect("holder").is_ok());
    assert_eq!(served + refused, 1000);
    assert!((1..=18).contains(&served), "served {served}");
    assert_eq!(actor.stats().snapshot().refused, refused as u64);
    arbiter.stop();
}

#[actix_rt::test]
async fn a_panic_in_a_handler_restarts_the_actor_and_the_next_message_succeeds() {
    let arbiter = Arbiter::new();
    let (_tree, actor, _open, generation) = start(16, RestartPolicy::default(), &arbiter);

    assert_eq!(actor.call(Explode).await, Err(CallError::Panicked));
    assert_eq!(actor.call(Work(7)).await, Ok(7));
    assert_eq!(actor.call(ExplodeLater).await, Err(CallError::Panicked));
    assert_eq!(actor.call(Work(8)).await, Ok(8));

    let stats = actor.stats().snapshot();
    assert_eq!(stats.restarts, 2);
    assert_eq!(stats.state, ActorState::Running);
    assert_eq!(
        generation.load(Ordering::SeqCst),
        2,
        "the resource was rebuilt each time"
    );
    assert!(stats
        .last_failure
        .as_deref()
        .is_some_and(|f| f.contains("boom")));
    arbiter.stop();
}

#[actix_rt::test]
async fn restarts_beyond_the_intensity_mark_the_actor_failed_instead_of_spinning() {
    let arbiter = Arbiter::new();
    let policy = RestartPolicy {
        max_restarts: 2,
        within: Duration::from_secs(60),
    };
    let (tree, actor, _open, _) = start(16, policy, &arbiter);
    for _ in 0..2 {
        assert_eq!(actor.call(Explode).await, Err(CallError::Panicked));
        assert_eq!(actor.call(Work(1)).await, Ok(1));
    }
    assert_eq!(actor.call(Explode).await, Err(CallError::Panicked));
    // The third panic within the window exceeds the intensity: the actor is failed and gone.
    let after = actor.call(Work(1)).await;
    assert_eq!(after, Err(CallError::Unavailable));
    let snapshot = tree.snapshot();
    assert_eq!(snapshot[0].state, ActorState::Failed);
    assert_eq!(snapshot[0].restarts, 2);
    arbiter.stop();
}

#[actix_rt::test]
async fn a_call_that_outlives_its_deadline_times_out_and_the_work_is_skipped() {
    let arbiter = Arbiter::new();
    let (_tree, actor, open, _) = start(16, RestartPolicy::default(), &arbiter);
    let holder = hold(&actor).await;
    let late = actor.call_within(Work(1), Duration::from_millis(50)).await;
    assert_eq!(late, Err(CallError::Timeout));
    open.send(true).expect("open");
    assert!(holder.await.expect("holder").is_ok());
    assert_eq!(actor.call(Work(2)).await, Ok(2));
    assert_eq!(
        actor.stats().snapshot().expired,
        1,
        "the expired envelope was not worked on"
    );
    arbiter.stop();
}

#[actix_rt::test]
async fn work_past_its_point_of_no_return_is_awaited_beyond_the_deadline_and_reported() {
    let arbiter = Arbiter::new();
    let (_tree, actor, _open, _) = start(16, RestartPolicy::default(), &arbiter);
    let committed = actor
        .call_within(
            Write {
                commit_after: Duration::ZERO,
                work: Duration::from_millis(300),
            },
            Duration::from_millis(100),
        )
        .await;
    assert_eq!(
        committed,
        Ok(true),
        "the caller hears the outcome of a commit sent before its deadline"
    );
    arbiter.stop();
}

#[actix_rt::test]
async fn work_that_reaches_its_point_of_no_return_after_the_deadline_may_not_commit() {
    let arbiter = Arbiter::new();
    let (_tree, actor, _open, _) = start(16, RestartPolicy::default(), &arbiter);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
    // The request's deadline (set at the edge) bounds a call with a longer default.
    let late = with_deadline(
        deadline,
        actor.call(Write {
            commit_after: Duration::from_millis(300),
            work: Duration::ZERO,
        }),
    )
    .await;
    assert_eq!(late, Err(CallError::Timeout));
    let now = tokio::time::Instant::now();
    assert!(
        now < deadline + Duration::from_millis(150),
        "answered at the deadline"
    );
    arbiter.stop();
}

#[actix_rt::test]
async fn a_caller_that_goes_away_is_never_committed_for() {
    let arbiter = Arbiter::new();
    let (_tree, actor, _open, _) = start(16, RestartPolicy::default(), &arbiter);
    let (tx, rx) = tokio::sync::oneshot::channel();
    struct Probe(tokio::sync::oneshot::Sender<bool>);
    impl Request for Probe {
        type Reply = ();
    }
    impl Handler<Envelope<Probe>> for Gatekeeper {
        type Result = ();
        fn handle(&mut self, env: Envelope<Probe>, ctx: &mut Context<Self>) {
            serve_call(self, ctx, env, |act, Probe(report), caller, _| {
                Reply::Spawn(Box::pin(
                    async move {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let _ = report.send(caller.commit());
                    }
                    .into_actor(act),
                ))
            });
        }
    }
    let call = actor.call_within(Probe(tx), Duration::from_secs(10));
    // The caller gives up long before its deadline (a client that disconnected).
    let _ = tokio::time::timeout(Duration::from_millis(50), call).await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), rx).await,
        Ok(Ok(false))
    );
    arbiter.stop();
}
