//! Failed credentials are rate limited per client (`rate_limit.classes.unauthenticated`): every
//! 401 under `/api/v1/` counts; once the client's budget is spent its requests get 429 without a
//! database lookup, but for keys the service already knows to be good. The merchant class counts
//! only keys that authenticated; the scheme's name is case-insensitive. A client of the
//! per-address classes is its IPv4 address or its IPv6 /64 (`rate_limit.ipv6_prefix`).

use crate::support::{Reply, TestApp, TestRedis, ADMIN_TOKEN};
use futures_util::future::join_all;
use rampart::settings::{RateLimitClass, Settings};
use serde_json::json;

/// Failed credentials: `limit` per hour (nothing refills within a test).
fn credentials_budget(limit: u32) -> impl FnOnce(&mut Settings) {
    move |s| {
        s.rate_limit.enabled = true;
        s.rate_limit.classes.unauthenticated = RateLimitClass {
            limit,
            period_secs: 3600,
        };
    }
}

/// Commands the `Db` actor answered so far.
fn db_commands(app: &TestApp) -> u64 {
    app.db.stats().snapshot().handled
}

fn number(reply: &Reply, name: &str) -> u64 {
    reply
        .header(name)
        .unwrap_or_else(|| panic!("no {name} on a {}", reply.status))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number"))
}

/// `GET path` with `Authorization: <authorization>` (none: `None`), from `forwarded` when given
/// (an `X-Forwarded-For` a trusted proxy would add).
async fn get(
    app: &TestApp,
    path: &str,
    authorization: Option<&str>,
    forwarded: Option<&str>,
) -> Reply {
    let mut req = app.client.get(app.url(path));
    if let Some(value) = authorization {
        req = req.insert_header(("Authorization", value.to_owned()));
    }
    if let Some(value) = forwarded {
        req = req.insert_header(("X-Forwarded-For", value.to_owned()));
    }
    app.send(req, None).await
}

fn assert_refused(reply: &Reply, limit: u64) {
    assert_eq!(reply.problem(429)["type"], "/problems/rate-limited");
    let retry_after = number(reply, "retry-after");
    assert!(retry_after >= 1, "retry after {retry_after}");
    assert_eq!(number(reply, "ratelimit-limit"), limit);
    assert_eq!(number(reply, "ratelimit-remaining"), 0);
    assert_eq!(number(reply, "ratelimit-reset"), retry_after);
}

#[actix_rt::test]
async fn invalid_keys_get_429_once_the_budget_is_spent_and_then_cost_no_database_command() {
    let budget = 10;
    let app = TestApp::builder()
        .configure(credentials_budget(budget))
        .spawn()
        .await;
    let start = db_commands(&app);
    let mut commands_when_spent = None;
    for i in 0..200u64 {
        let key = format!("Bearer rk_invalid_{i:04}");
        let reply = get(&app, "/api/v1/products", Some(&key), None).await;
        if i < u64::from(budget) {
            reply.problem(401);
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
            // A 401 tells what is left of the client's budget of failed credentials.
            assert_eq!(number(&reply, "ratelimit-limit"), u64::from(budget));
            assert_eq!(
                number(&reply, "ratelimit-remaining"),
                u64::from(budget) - 1 - i
            );
            // Each distinct key was looked up once.
            assert_eq!(db_commands(&app), start + i + 1, "request {i}");
        } else {
            assert_refused(&reply, u64::from(budget));
            let spent = *commands_when_spent.get_or_insert(db_commands(&app));
            assert_eq!(
                db_commands(&app),
                spent,
                "request {i}: a spent budget is answered without the database"
            );
        }
    }
    assert_eq!(commands_when_spent, Some(start + u64::from(budget)));
    let metrics = app.metrics().await;
    for line in [
        r#"rate_limit_decisions_total{class="unauthenticated",decision="allowed"} 10"#,
        r#"rate_limit_decisions_total{class="unauthenticated",decision="denied"} 190"#,
        r#"rate_limit_decisions_total{class="merchant",decision="allowed"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}

#[actix_rt::test]
async fn a_bad_key_is_looked_up_once_and_no_key_costs_no_lookup() {
    let app = TestApp::builder()
        .configure(credentials_budget(1000))
        .spawn()
        .await;
    let start = db_commands(&app);
    for _ in 0..5 {
        let reply = get(&app, "/api/v1/orders", Some("Bearer rk_not_a_key"), None).await;
        reply.problem(401);
    }
    for _ in 0..5 {
        get(&app, "/api/v1/orders", None, None).await.problem(401);
    }
    assert_eq!(db_commands(&app), start + 1);
}

#[actix_rt::test]
async fn no_key_a_wrong_key_and_a_wrong_admin_token_all_spend_the_budget() {
    let app = TestApp::builder()
        .configure(credentials_budget(3))
        .configure(|s| {
            s.rate_limit.classes.storefront = RateLimitClass {
                limit: 100,
                period_secs: 60,
            }
        })
        .spawn()
        .await;
    let m = app.create_merchant("Budget").await;
    let wrong_admin = json!({"name": "Nope"});
    get(&app, "/api/v1/products", None, None).await.problem(401);
    get(&app, "/api/v1/products", Some("Bearer rk_wrong"), None)
        .await
        .problem(401);
    let reply = app
        .post_json(
            "/api/v1/admin/merchants",
            Some("not-the-token"),
            &wrong_admin,
        )
        .await;
    reply.problem(401);
    assert_eq!(number(&reply, "ratelimit-remaining"), 0);

    // Spent: every kind of failed credentials is 429 now, ops and admin endpoints included.
    assert_refused(&get(&app, "/api/v1/products", None, None).await, 3);
    assert_refused(
        &get(&app, "/api/v1/orders", Some("Bearer rk_other"), None).await,
        3,
    );
    assert_refused(
        &get(
            &app,
            "/api/v1/ops/stats",
            Some("Bearer not-the-token"),
            None,
        )
        .await,
        3,
    );
    assert_refused(
        &app.post_json("/api/v1/admin/merchants", Some("nope"), &wrong_admin)
            .await,
        3,
    );
    // The admin token is known good; the storefront counts in its own class.
    let ops = get(
        &app,
        "/api/v1/ops/stats",
        Some(&format!("bearer {ADMIN_TOKEN}")),
        None,
    )
    .await;
    assert_eq!(ops.status, 200);
    assert!(
        ops.header("ratelimit-limit").is_none(),
        "ops are not limited"
    );
    app.create_merchant("Still possible").await;
    let store = get(
        &app,
        &format!("/api/v1/stores/{}/products", m.id),
        None,
        None,
    )
    .await;
    assert_eq!(store.status, 200);
    assert_eq!(number(&store, "ratelimit-limit"), 100);
}

#[actix_rt::test]
async fn a_known_good_key_works_from_a_spent_client_and_only_keys_that_authenticated_count_as_merchant(
) {
    let app = TestApp::builder()
        .configure(credentials_budget(3))
        .configure(|s| {
            s.rate_limit.classes.merchant = RateLimitClass {
                limit: 5,
                period_secs: 3600,
            }
        })
        .spawn()
        .await;
    let m = app.create_merchant("Known").await;
    let other = app.create_merchant("Not seen yet").await;
    // `bearer` in lower case authenticates and counts in the merchant class.
    let lower = format!("bearer {}", m.api_key);
    let first = get(&app, "/api/v1/products", Some(&lower), None).await;
    first.assert_status(200);
    assert_eq!(number(&first, "ratelimit-limit"), 5);
    assert_eq!(number(&first, "ratelimit-remaining"), 4);

    // The key's first request, not yet known good, paid one unit of the budget of failed
    // credentials before its lookup; a neighbour behind the same address spends the rest.
    for i in 0..2 {
        get(
            &app,
            "/api/v1/products",
            Some(&format!("Bearer bad-{i}")),
            None,
        )
        .await
        .problem(401);
    }
    let before = db_commands(&app);
    assert_refused(
        &get(&app, "/api/v1/products", Some("Bearer bad-4"), None).await,
        3,
    );
    // A valid key the service has not seen yet is not known good: 429, without a lookup.
    assert_refused(
        &get(
            &app,
            "/api/v1/products",
            Some(&format!("Bearer {}", other.api_key)),
            None,
        )
        .await,
        3,
    );
    assert_eq!(db_commands(&app), before, "no lookup for a spent client");

    // The known key still works, in any case of the scheme, counted in the merchant class only.
    for (scheme, remaining) in [("Bearer", 3), ("BEARER", 2), ("bearer", 1), ("bEaReR", 0)] {
        let reply = get(
            &app,
            "/api/v1/products",
            Some(&format!("{scheme} {}", m.api_key)),
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{scheme}");
        assert_eq!(number(&reply, "ratelimit-limit"), 5, "{scheme}");
        assert_eq!(number(&reply, "ratelimit-remaining"), remaining, "{scheme}");
    }
    // Its own budget spent: 429 with the merchant class's figures.
    assert_refused(&get(&app, "/api/v1/products", Some(&lower), None).await, 5);
    let metrics = app.metrics().await;
    for line in [
        r#"rate_limit_decisions_total{class="merchant",decision="allowed"} 5"#,
        r#"rate_limit_decisions_total{class="merchant",decision="denied"} 1"#,
        r#"rate_limit_decisions_total{class="unauthenticated",decision="allowed"} 3"#,
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}

#[actix_rt::test]
async fn clients_are_ipv4_addresses_and_ipv6_networks_of_the_configured_prefix() {
    let app = TestApp::builder()
        .configure(credentials_budget(1))
        .configure(|s| {
            s.server.trusted_proxies = vec!["127.0.0.0/8".into()];
            s.rate_limit.classes.storefront = RateLimitClass {
                limit: 2,
                period_secs: 3600,
            };
        })
        .spawn()
        .await;
    let m = app.create_merchant("Networks").await;
    let path = format!("/api/v1/stores/{}/products", m.id);
    let from = async |address: &str| get(&app, &path, None, Some(address)).await.status;
    // Addresses of one /64 share a bucket.
    assert_eq!(from("2001:db8:1:2::1").await, 200);
    assert_eq!(from("2001:db8:1:2:ffff:ffff:ffff:ffff").await, 200);
    assert_eq!(from("2001:db8:1:2:abcd::7").await, 429);
    // The neighbouring /64s do not.
    assert_eq!(from("2001:db8:1:3::1").await, 200);
    assert_eq!(from("2001:db8:1:1:ffff:ffff:ffff:ffff").await, 200);
    // IPv4-mapped IPv6 is its IPv4 address; IPv4 addresses are not grouped.
    assert_eq!(from("::ffff:198.51.100.7").await, 200);
    assert_eq!(from("198.51.100.7").await, 200);
    assert_eq!(from("::ffff:198.51.100.7").await, 429);
    assert_eq!(from("198.51.100.8").await, 200);

    // Failed credentials count per network too.
    let bad = async |address: &str| {
        get(&app, "/api/v1/products", Some("Bearer bad"), Some(address))
            .await
            .status
    };
    assert_eq!(bad("2001:db8:5:5::1").await, 401);
    assert_eq!(bad("2001:db8:5:5::2").await, 429);
    assert_eq!(bad("2001:db8:5:6::1").await, 401);
}

#[actix_rt::test]
async fn the_ipv6_prefix_is_configurable() {
    let app = TestApp::builder()
        .configure(|s| {
            s.rate_limit.enabled = true;
            s.rate_limit.ipv6_prefix = 48;
            s.server.trusted_proxies = vec!["127.0.0.0/8".into()];
            s.rate_limit.classes.storefront = RateLimitClass {
                limit: 1,
                period_secs: 3600,
            };
        })
        .spawn()
        .await;
    let m = app.create_merchant("Prefix").await;
    let path = format!("/api/v1/stores/{}/products", m.id);
    let from = async |address: &str| get(&app, &path, None, Some(address)).await.status;
    assert_eq!(from("2001:db8:1:2::1").await, 200);
    assert_eq!(from("2001:db8:1:9::1").await, 429);
    assert_eq!(from("2001:db8:2::1").await, 200);
}

#[actix_rt::test]
async fn with_redis_a_budget_spent_on_one_instance_is_spent_on_the_other() {
    let redis = TestRedis::start();
    let a = TestApp::builder()
        .with_redis(&redis)
        .configure(credentials_budget(3))
        .spawn()
        .await;
    let b = TestApp::builder()
        .beside(&a)
        .with_redis(&redis)
        .configure(credentials_budget(3))
        .spawn()
        .await;
    let m = a.create_merchant("Shared").await;
    let key = format!("Bearer {}", m.api_key);
    assert_eq!(
        get(&b, "/api/v1/products", Some(&key), None).await.status,
        200
    );
    // That first request paid one unit before its lookup; the rest is spent on a.
    for i in 0..2 {
        get(
            &a,
            "/api/v1/products",
            Some(&format!("Bearer bad-{i}")),
            None,
        )
        .await
        .problem(401);
    }
    let before = db_commands(&b);
    assert_refused(
        &get(&b, "/api/v1/products", Some("Bearer bad-on-b"), None).await,
        3,
    );
    assert_eq!(db_commands(&b), before, "no lookup on the other instance");
    // The key b found good still works there.
    assert_eq!(
        get(&b, "/api/v1/products", Some(&key), None).await.status,
        200
    );
    b.stop().await;
    a.stop().await;
}

#[actix_rt::test]
async fn percent_encoded_paths_count_as_the_paths_they_are_routed_as() {
    let budget = 10;
    let app = TestApp::builder()
        .configure(credentials_budget(budget))
        .configure(|s| {
            s.rate_limit.classes.storefront = RateLimitClass {
                limit: 100,
                period_secs: 60,
            }
        })
        .spawn()
        .await;
    let m = app.create_merchant("Encoded").await;
    // The router decodes `%61` (`a`): these are `/api/v1/products` and the admin endpoint.
    let start = db_commands(&app);
    for i in 0..30u64 {
        let key = format!("Bearer rk_encoded_{i:04}");
        let reply = get(&app, "/%61pi/v1/products", Some(&key), None).await;
        if i < u64::from(budget) {
            reply.problem(401);
            assert_eq!(
                number(&reply, "ratelimit-remaining"),
                u64::from(budget) - 1 - i
            );
        } else {
            assert_refused(&reply, u64::from(budget));
        }
    }
    assert_eq!(
        db_commands(&app),
        start + u64::from(budget),
        "no lookup once the budget is spent"
    );
    // Admin-token guesses through an encoded path are refused too.
    for path in ["/%61pi/v1/admin/merchants", "/api/v1/%61dmin/merchants"] {
        let reply = app
            .post_json(path, Some("a-guess"), &json!({"name": "Nope"}))
            .await;
        assert_refused(&reply, u64::from(budget));
    }
    // An encoded storefront path is the storefront route, counted in its own class.
    let store = get(
        &app,
        &format!("/%61pi/v1/stores/{}/products", m.id),
        None,
        None,
    )
    .await;
    store.assert_status(200);
    assert_eq!(number(&store, "ratelimit-limit"), 100);
}

#[actix_rt::test]
async fn concurrent_requests_with_distinct_bad_keys_cost_at_most_the_budget_in_lookups() {
    let budget = 10;
    let app = TestApp::builder()
        .configure(credentials_budget(budget))
        .spawn()
        .await;
    let start = db_commands(&app);
    let replies = join_all((0..200u64).map(|i| {
        let key = format!("Bearer rk_concurrent_{i:04}");
        let app = &app;
        async move { get(app, "/api/v1/products", Some(&key), None).await }
    }))
    .await;
    let (mut unauthorized, mut refused) = (0, 0);
    for reply in &replies {
        match reply.status.as_u16() {
            401 => unauthorized += 1,
            429 => {
                assert_refused(reply, u64::from(budget));
                refused += 1;
            }
            other => panic!("{other}: {}", String::from_utf8_lossy(&reply.body)),
        }
    }
    let lookups = db_commands(&app) - start;
    assert!(
        lookups <= u64::from(budget),
        "{lookups} lookups for a budget of {budget}"
    );
    assert_eq!(
        unauthorized, budget,
        "every unit of the budget answered once"
    );
    assert_eq!(refused, 200 - budget);
}
