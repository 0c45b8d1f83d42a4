//! The cost of one request-path call through admission: same thread and cross thread, and the
//! cost of a refusal when the mailbox is full; and a cache hit read from the tier (the path
//! storefront hits take) against the same hit asked of the `Cache` actor across threads.

use actix::{Actor, ActorContext, Arbiter, Context, Handler};
use criterion::{criterion_group, criterion_main, Criterion};
use rampart_actors::{
    serve, ActorSpec, Cache, CacheSettings, Envelope, Handle, Loaded, Lookup, Reply, Request,
    Resilient, Stop, Supervision, Tree,
};
use std::sync::Arc;
use std::time::Duration;

struct Echo {
    supervision: Supervision,
}

impl Actor for Echo {
    type Context = Context<Self>;
}

impl Resilient for Echo {
    fn supervision(&mut self) -> &mut Supervision {
        &mut self.supervision
    }
    fn rebuild(&mut self, _: &mut Context<Self>) {}
}

impl Handler<Stop> for Echo {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

struct Ask(u64);
impl Request for Ask {
    type Reply = u64;
}

impl Handler<Envelope<Ask>> for Echo {
    type Result = ();
    fn handle(&mut self, env: Envelope<Ask>, ctx: &mut Context<Self>) {
        serve(self, ctx, env, |_, Ask(n), _| Reply::Ready(n + 1));
    }
}

fn start(tree: &mut Tree, arbiter: Option<&Arbiter>, mailbox: usize) -> Handle<Echo> {
    let spec = ActorSpec::new("echo").mailbox(mailbox);
    tree.start(&spec, arbiter.map(|a| a.handle()).as_ref(), |supervision| {
        Echo { supervision }
    })
}

fn calls(c: &mut Criterion) {
    let system = actix::System::new();
    let (same, cross, arbiter) = system.block_on(async {
        let mut tree = Tree::new();
        let arbiter = Arbiter::new();
        (
            start(&mut tree, None, 1024),
            start(&mut tree, Some(&arbiter), 1024),
            arbiter,
        )
    });
    c.bench_function("actor call, same thread", |b| {
        b.iter(|| system.block_on(same.call(Ask(1))))
    });
    c.bench_function("actor call, cross thread", |b| {
        b.iter(|| system.block_on(cross.call(Ask(1))))
    });
    // A full mailbox: the actor's thread is parked on a blocked arbiter, so every call is refused.
    let blocked = Arbiter::new();
    let full = system.block_on(async {
        let mut tree = Tree::new();
        let handle = start(&mut tree, Some(&blocked), 1);
        blocked.spawn_fn(|| std::thread::sleep(std::time::Duration::from_secs(30)));
        for _ in 0..4 {
            let h = handle.clone();
            actix::spawn(async move {
                let _ = h.call(Ask(0)).await;
            });
        }
        tokio::task::yield_now().await;
        handle
    });
    c.bench_function("admission refusal (mailbox full)", |b| {
        b.iter(|| {
            let refused = system.block_on(full.call(Ask(1)));
            assert!(refused.is_err());
        })
    });
    arbiter.stop();
    drop(blocked);
}

fn cache_hits(c: &mut Criterion) {
    let system = actix::System::new();
    let settings = CacheSettings {
        max_entries: 1000,
        max_bytes: 1 << 20,
        stale_for: Duration::from_secs(60),
    };
    let reader = Cache::reader(&settings);
    let arbiter = Arbiter::new();
    let cache = system.block_on(async {
        let mut tree = Tree::new();
        let tier = reader.clone();
        let cache = tree.start(
            &ActorSpec::new("cache").mailbox(1024),
            Some(&arbiter.handle()),
            move |supervision| Cache::new(settings, tier, None, supervision),
        );
        let body = vec![b'x'; 344];
        let loaded = cache
            .load(
                Arc::from("product:m:1"),
                None,
                Box::new(move || {
                    Box::pin(async move {
                        Ok(Some(Loaded {
                            body: body.into(),
                            tag: Arc::from("\"v1\""),
                            fresh_for: Duration::from_secs(3600),
                            negative: false,
                        }))
                    })
                }),
            )
            .await;
        assert!(matches!(loaded, Ok(Some(_))));
        cache
    });
    c.bench_function("cache hit, read from the tier", |b| {
        b.iter(|| assert!(matches!(reader.lookup("product:m:1"), Lookup::Fresh(_))))
    });
    c.bench_function("cache hit, asked of the actor (cross thread)", |b| {
        b.iter(|| {
            let hit = system.block_on(cache.load(
                Arc::from("product:m:1"),
                None,
                Box::new(|| Box::pin(async { Ok(None) })),
            ));
            assert!(matches!(hit, Ok(Some(_))));
        })
    });
    arbiter.stop();
}

criterion_group!(benches, calls, cache_hits);
criterion_main!(benches);
