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

use crate::stats::ActorStats;
use crate::supervision::{on_panic, Resilient};
use actix::dev::ToEnvelope;
use actix::fut::{ActorFuture, ActorFutureExt, LocalBoxActorFuture};
use actix::{Actor, Addr, AsyncContext, Context, Handler, Message};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
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

pub struct Envelope<M: Request> {
    msg: M,
    reply: oneshot::Sender<Result<M::Reply, CallError>>,
    deadline: Instant,
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

    /// Sends `msg` with the default deadline.
    pub async fn call<M>(&self, msg: M) -> Result<M::Reply, CallError>
    where
        M: Request,
        A: Handler<Envelope<M>>,
        A::Context: ToEnvelope<A, Envelope<M>>,
    {
        self.call_within(msg, self.inner.deadline).await
    }

    /// Sends `msg`, refusing at once when the mailbox is full, and waits at most `within`.
    pub async fn call_within<M>(&self, msg: M, within: Duration) -> Result<M::Reply, CallError>
    where
        M: Request,
        A: Handler<Envelope<M>>,
        A::Context: ToEnvelope<A, Envelope<M>>,
    {
        let deadline = Instant::now() + within;
        let (reply, answer) = oneshot::channel();
        let envelope = Envelope {
            msg,
            reply,
            deadline,
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
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            // The actor dropped the envelope: it stopped before answering.
            Ok(Err(_)) => Err(CallError::Unavailable),
            Err(_) => Err(CallError::Timeout),
        }
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
    let Envelope {
        msg,
        reply,
        deadline,
        span,
    } = envelope;
    let stats = Arc::clone(act.supervision().stats());
    stats.dequeued();
    if reply.is_closed() || Instant::now() >= deadline {
        stats.expired();
        return;
    }
    let outcome = {
        let _entered = span.enter();
        catch_unwind(AssertUnwindSafe(|| handler(act, msg, ctx)))
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
