//! The injected fault: the [`Crash`] message, and the [`crashable!`] macro with which each actor
//! declares, in its own file, that its handler can be made to panic through its mailbox.
//!
//! A crash is answered at the message boundary like any panic ([`crate::admission::serve`]):
//! the caller gets [`crate::CallError::Panicked`] and the actor restarts under its supervision.
//! The toolkit names no actor: each actor opts in with `crashable!(ItsType)`.

use crate::admission::Request;

/// Makes the actor's handler panic: a fault injected by tests (and by people checking a
/// deployment's supervision), answered with [`crate::CallError::Panicked`] and a restart.
pub struct Crash;

impl Request for Crash {
    type Reply = ();
}

/// Lets tests crash the named actor kinds through their mailboxes: invoked in each actor's file.
macro_rules! crashable {
    ($($actor:ty),* $(,)?) => {$(
        impl actix::Handler<$crate::admission::Envelope<$crate::crash::Crash>> for $actor {
            type Result = ();

            fn handle(
                &mut self,
                envelope: $crate::admission::Envelope<$crate::crash::Crash>,
                ctx: &mut actix::Context<Self>,
            ) {
                $crate::admission::serve(self, ctx, envelope, |_, $crate::crash::Crash, _| {
                    panic!("crash injected into {}", stringify!($actor))
                });
            }
        }
    )*};
}

pub(crate) use crashable;
