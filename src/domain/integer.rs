//! Integers as JSON Schema counts them: `3` and `3.0` are the same integer (an integral number),
//! so a client that writes `3.0` for an `integer` field is understood, not refused. `3.5` and
//! numbers beyond an i64 are still errors.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

struct Integer;

impl Visitor<'_> for Integer {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom("integer out of range"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        // 2^63 is exactly representable; everything below it that is integral converts exactly.
        if v.fract() == 0.0 && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&v) {
            Ok(v as i64)
        } else {
            Err(E::invalid_type(de::Unexpected::Float(v), &self))
        }
    }
}

pub fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(Integer)
}

/// An optional field that, when present, must be an integer (`null` is refused, as the schema
/// says: absent means "unchanged"); use with `#[serde(default)]`.
pub fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    integer(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct N {
        #[serde(deserialize_with = "integer")]
        n: i64,
    }

    fn parse(json: &str) -> Option<i64> {
        serde_json::from_str::<N>(json).ok().map(|n| n.n)
    }

    #[test]
    fn integral_numbers_are_integers_and_others_are_not() {
        assert_eq!(parse(r#"{"n": 3}"#), Some(3));
        assert_eq!(parse(r#"{"n": -3.0}"#), Some(-3));
        assert_eq!(parse(r#"{"n": 1e3}"#), Some(1000));
        assert_eq!(parse(r#"{"n": 3.5}"#), None);
        assert_eq!(parse(r#"{"n": 1e30}"#), None);
        assert_eq!(parse(r#"{"n": 99999999999999999999}"#), None);
        assert_eq!(parse(r#"{"n": "3"}"#), None);
    }
}
