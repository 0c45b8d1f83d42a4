//! GCRA on Redis's clock: the limiter's two scripts (a decision that may grant requests ahead,
//! and a peek that writes nothing) and their calls through the [`RedisLink`], so the limits hold
//! across every instance together.

use crate::gcra::Gcra;
use crate::redis_link::RedisLink;
use std::sync::LazyLock;

/// GCRA on Redis's clock, for up to `want` requests at once. KEYS[1]: the key; ARGV: emission
/// interval and burst tolerance in microseconds, the limit, `want`. Grants as many of the `want`
/// as the limit allows now (the TAT moves by one interval per granted request) and answers
/// {granted, remaining, retry_after_us, reset_after_us}.
const SCRIPT: &str = r#"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if now < tat - tolerance then
  return {0, 0, tat - tolerance - now, tat - now}
end
local granted = math.floor((now + tolerance - tat) / interval) + 1
if granted > want then granted = want end
local new_tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
local remaining = limit - math.ceil((new_tat - now) / interval)
if remaining < 0 then remaining = 0 end
return {granted, remaining, 0, new_tat - now}
"#;

/// How far a key's TAT runs ahead of Redis's clock, in microseconds (0: at most now); writes
/// nothing. KEYS[1]: the key.
static PEEK_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then return 0 end
return tat - now
"#,
    )
});

/// The decision script, loaded once per limiter.
pub(super) fn script() -> redis::Script {
    redis::Script::new(SCRIPT)
}

/// How far the key's theoretical arrival time in class `class` runs ahead of Redis's clock
/// (nanoseconds).
pub(super) async fn ahead(link: &RedisLink, class: &str, key: &str) -> Option<u64> {
    let redis_key = format!("rl:{class}:{key}");
    let micros: i64 = link
        .run(|mut conn| async move { PEEK_SCRIPT.key(redis_key).invoke_async(&mut conn).await })
        .await?;
    Some(u64::try_from(micros).unwrap_or(0).saturating_mul(1_000))
}

/// Asks Redis for up to `want` requests of `key` in class `class` at once: granted, remaining,
/// retry after and reset after (microseconds).
pub(super) async fn grant(
    link: &RedisLink,
    script: &redis::Script,
    class: &str,
    gcra: &Gcra,
    key: &str,
    want: u32,
) -> Option<[i64; 4]> {
    let limit = gcra.limit();
    // The script works in microseconds: the same GCRA as in process, at that resolution.
    let interval = (gcra.interval().as_micros() as u64).max(1);
    let tolerance = interval * u64::from(limit - 1);
    let redis_key = format!("rl:{class}:{key}");
    let script = script.clone();
    let answer: Vec<i64> = link
        .run(|mut conn| async move {
            script
                .key(redis_key)
                .arg(interval)
                .arg(tolerance)
                .arg(limit)
                .arg(want)
                .invoke_async(&mut conn)
                .await
        })
        .await?;
    answer[..].try_into().ok()
}
