//! Bounded admission for request paths.
//!
//! A caller builds an [`Envelope`] (the request, a reply channel, its deadline and tracing span)
//! and offers it with `try_send` on the actor's one shared address. A full mailbox refuses at
//! once ([`CallError::Overloaded`]) instead of queueing without bound as `Addr::send` would; the
//! reply is awaited against the deadline ([`CallError::Timeout`]). An actor answers envelopes
//! through [`serve`], which catches panics and hands them to supervision.
//!
//! The address must be shared, not cloned per caller: actix parks a sender whose message filled
//! the mailbox and refuses its later `try_send`s, but each clone is a sender with one slot of its
//! own. [`Handle`] clones share one sender.
//!
//! Deadlines travel with the work. An edge sets one per request with [`with_deadline`]; every
//! call made inside it waits no later than that (nor than the handle's default). The actor sees
//! the call as a [`Caller`]: its deadline, whether the caller is still waiting, and
//! [`Caller::commit`], the point of no return. Before it, the caller may give up (deadline, or
//! its future dropped) and the work must be undone; after it, the caller waits for the outcome
//! whatever the deadline says, so the answer it reports is the truth. A write answered with a
//! timeout has therefore changed nothing, now or later.

use crate::stats::ActorStats;
use crate::supervision::{on_panic, Resilient};
use actix::dev::ToEnvelope;
use actix::fut::{ActorFuture, ActorFutureExt, LocalBoxActorFuture};
use actix::{Actor, Addr, AsyncContext, Context, Handler, Message};
use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A message that can be sent through admission, with the type of its reply.
pub trait Request: Send + 'static {
    type Reply: Send + 'static;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The mailbox was full: the actor is behind, come back later.
    #[error("actor mailbox is full")]
    Overloaded,
    /// No reply before the caller's deadline.
    #[error("no reply before the deadline")]
    Timeout,
    /// The actor is stopped or failed.
    #[error("actor is not running")]
    Unavailable,
    /// The handler panicked; the actor was restarted (or failed).
    #[error("actor handler panicked")]
    Panicked,
}

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `work` with a deadline that every call made inside it honours.
pub async fn with_deadline<F: Future>(at: Instant, work: F) -> F::Output {
    DEADLINE.scope(at, work).await
}

/// The deadline set by the innermost [`with_deadline`] around the current task, if any.
pub fn current_deadline() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

const WAITING: u8 = 0;
const COMMITTED: u8 = 1;
const ABANDONED: u8 = 2;

/// How long a caller whose work passed its point of no return waits for the outcome beyond its
/// deadline. Only a stuck COMMIT takes this long; the server's own timeouts end it sooner.
const COMMIT_OUTCOME_WAIT: Duration = Duration::from_secs(60);

/// One call as the actor sees it: its deadline and whether its caller still waits.
#[derive(Debug, Clone)]
pub struct Caller {
    deadline: Instant,
    state: Arc<AtomicU8>,
}

impl Caller {
    pub fn new(deadline: Instant) -> Self {
        Self {
            deadline,
            state: Arc::new(AtomicU8::new(WAITING)),
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Still worth working for: not given up and not past the deadline (or already committed).
    pub fn is_live(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            COMMITTED => true,
            ABANDONED => false,
            _ => Instant::now() < self.deadline,
        }
    }

    /// The point of no return: true when the work may now be made permanent (the caller will
    /// wait for its outcome); false when the caller gave up or the deadline passed, and the work
    /// must be undone.
    pub fn commit(&self) -> bool {
        if Instant::now() >= self.deadline {
            self.abandon();
        }
        match self
            .state
            .compare_exchange(WAITING, COMMITTED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == COMMITTED,
        }
    }

    /// The caller gives up; false when the work already passed its point of no return.
    fn abandon(&self) -> bool {
        match self
            .state
            .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == ABANDONED,
        }
    }
}

/// Marks a call abandoned when the waiting future is dropped (a client that went away).
struct AbandonOnDrop(Caller);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

pub struct Envelope<M: Request> {
    msg: M,
    reply: oneshot::Sender<Result<M::Reply, CallError>>,
    caller: Caller,
    span: tracing::Span,
}

impl<M: Request> Message for Envelope<M> {
    type Result = ();
}

/// How a handler answers: now, or with a future that runs beside other messages (`Spawn`) or
/// holds the mailbox until it completes (`Wait`, for ordering or to cap work in flight). While a
/// `Wait` future runs, actix polls none of the actor's other futures either: work that must go
/// on meanwhile has to run as a task of its own.
pub enum Reply<A: Actor, T> {
    Ready(T),
    Spawn(LocalBoxActorFuture<A, T>),
    Wait(LocalBoxActorFuture<A, T>),
}

/// A cloneable handle on a supervised actor: the shared address, its stats, its default deadline.
pub struct Handle<A: Actor> {
    inner: Arc<Inner<A>>,
}

struct Inner<A: Actor> {
    addr: Addr<A>,
    stats: Arc<ActorStats>,
    deadline: Duration,
}

impl<A: Actor> Clone for Handle<A> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<A: Actor> Handle<A> {
    pub fn new(addr: Addr<A>, stats: Arc<ActorStats>, deadline: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                addr,
                stats,
                deadline,
            }),
        }
    }

    pub fn stats(&self) -> &Arc<ActorStats> {
        &self.inner.stats
    }

    /// The address, for messages off the request path (shutdown, tests).
    pub fn addr(&self) -> &Addr<A> {
        &self.inner.addr
    }

    /// Sends `msg` with the default deadline (or the current task's, when sooner).
    pub async fn call<M>(&self, msg: M) -> Result<M::Reply, CallError>
    where
        M: Request,
        A: Handler<Envelope<M>>,
        A::Context: ToEnvelope<A, Envelope<M>>,
    {
        self.call_within(msg, self.inner.deadline).await
    }

    /// Sends `msg`, refusing at once when the mailbox is full, and waits at most `within` (or
    /// until the current task's deadline, when sooner), unless the work has passed its point of
    /// no return: then the outcome is awaited and reported as it is.
    pub async fn call_within<M>(&self, msg: M, within: Duration) -> Result<M::Reply, CallError>
    where
        M: Request,
        A: Handler<Envelope<M>>,
        A::Context: ToEnvelope<A, Envelope<M>>,
    {
        let mut deadline = Instant::now() + within;
        if let Some(task_deadline) = current_deadline() {
            deadline = deadline.min(task_deadline);
        }
        // Held until the answer: dropped early (the caller went away), it abandons the call.
        let caller = AbandonOnDrop(Caller::new(deadline));
        let (reply, mut answer) = oneshot::channel();
        let envelope = Envelope {
            msg,
            reply,
            caller: caller.0.clone(),
            span: tracing::Span::current(),
        };
        match self.inner.addr.try_send(envelope) {
            Ok(()) => self.inner.stats.admitted(),
            Err(actix::prelude::SendError::Full(_)) => {
                self.inner.stats.refused();
                return Err(CallError::Overloaded);
            }
            Err(actix::prelude::SendError::Closed(_)) => return Err(CallError::Unavailable),
        }
        let answered = match tokio::time::timeout_at(deadline, &mut answer).await {
            Ok(answered) => answered,
            Err(_) if caller.0.abandon() => return Err(CallError::Timeout),
            // Committed: the outcome is on its way and is what the caller must hear.
            Err(_) => match tokio::time::timeout(COMMIT_OUTCOME_WAIT, answer).await {
                Ok(answered) => answered,
                Err(_) => return Err(CallError::Timeout),
            },
        };
        // Err: the actor dropped the envelope, it stopped before answering.
        answered.unwrap_or(Err(CallError::Unavailable))
    }
}

/// Answers one envelope: skips work whose caller already gave up, runs `handler` inside the
/// caller's span, catches a panic in it or in the future it returns, and reports the panic to
/// supervision so the actor rebuilds its resource.
pub fn serve<A, M, F>(act: &mut A, ctx: &mut Context<A>, envelope: Envelope<M>, handler: F)
where
    A: Resilient,
    M: Request,
    F: FnOnce(&mut A, M, &mut Context<A>) -> Reply<A, M::Reply>,
{
    serve_call(act, ctx, envelope, |act, msg, _, ctx| {
        handler(act, msg, ctx)
    })
}

/// [`serve`] for handlers whose work needs the [`Caller`]: its deadline, and the point of no
/// return of a write.
pub fn serve_call<A, M, F>(act: &mut A, ctx: &mut Context<A>, envelope: Envelope<M>, handler: F)
where
    A: Resilient,
    M: Request,
    F: FnOnce(&mut A, M, Caller, &mut Context<A>) -> Reply<A, M::Reply>,
{
    let Envelope {
        msg,
        reply,
        caller,
        span,
    } = envelope;
    let stats = Arc::clone(act.supervision().stats());
    stats.dequeued();
    if reply.is_closed() || !caller.is_live() {
        stats.expired();
        return;
    }
    let outcome = {
        let _entered = span.enter();
        catch_unwind(AssertUnwindSafe(|| handler(act, msg, caller, ctx)))
    };
    let (future, blocking) = match outcome {
        Ok(Reply::Ready(value)) => {
            stats.handled();
            let _ = reply.send(Ok(value));
            return;
        }
        Ok(Reply::Spawn(fut)) => (fut, false),
        Ok(Reply::Wait(fut)) => (fut, true),
        Err(panic) => {
            // Supervision first, so a caller woken by the reply already sees the new state.
            on_panic(act, ctx, panic_text(panic.as_ref()));
            let _ = reply.send(Err(CallError::Panicked));
            return;
        }
    };
    let guarded = Guarded {
        inner: future,
        span,
    }
    .map(
        move |result, act: &mut A, ctx: &mut Context<A>| match result {
            Ok(value) => {
                stats.handled();
                let _ = reply.send(Ok(value));
            }
            Err(panic) => {
                let _ = reply.send(Err(CallError::Panicked));
                on_panic(act, ctx, panic);
            }
        },
    );
    if blocking {
        ctx.wait(guarded);
    } else {
        ctx.spawn(guarded);
    }
}

/// Polls an actor future inside its span, turning a panic into `Err(text)`.
struct Guarded<A: Actor, T> {
    inner: LocalBoxActorFuture<A, T>,
    span: tracing::Span,
}

impl<A: Actor, T> ActorFuture<A> for Guarded<A, T> {
    type Output = Result<T, String>;

    fn poll(
        self: Pin<&mut Self>,
        act: &mut A,
        ctx: &mut A::Context,
        task: &mut std::task::Context<'_>,
    ) -> Poll<Self::Output> {
        let this = self.get_mut();
        let _entered = this.span.enter();
        match catch_unwind(AssertUnwindSafe(|| {
            this.inner.as_mut().poll(act, ctx, task)
        })) {
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic_text(panic.as_ref()))),
        }
    }
}

fn panic_text(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}
