//! Strict JSON: a value parsed with duplicate object members rejected at every depth.
//!
//! RFC 7515 §4 and RFC 8725 leave duplicate members to the parser; two parsers that pick different
//! duplicates would read different claims from one signed token. We refuse them. Nesting depth is bounded by
//! `serde_json`'s recursion limit (128).

use std::fmt;

use serde::de::{self, Deserialize, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::Rejection;

/// The message prefix that marks a duplicate-member error inside a `serde_json::Error`.
pub(crate) const DUPLICATE: &str = "duplicate member";

/// Whether a `serde_json` error was raised for a duplicate member.
pub(crate) fn is_duplicate(err: &serde_json::Error) -> bool {
    err.to_string().starts_with(DUPLICATE)
}

/// The error to raise from a visitor when an object repeats `name`.
pub(crate) fn duplicate<E: de::Error>(name: &str) -> E {
    E::custom(format_args!("{DUPLICATE} `{name}`"))
}

/// Stores `value` in `slot`, refusing a second occurrence of `name`.
pub(crate) fn set_once<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), E> {
    if slot.is_some() {
        return Err(duplicate(name));
    }
    *slot = Some(value);
    Ok(())
}

/// Parses a token segment as `T`: a repeated member is [`Rejection::DuplicateMember`], anything else that
/// fails (not UTF-8, not JSON, wrong types, too deep) is `invalid`. One UTF-8 check of the whole segment is
/// cheaper than serde_json's check of each string.
pub(crate) fn parse_segment<T: DeserializeOwned>(bytes: &[u8], invalid: Rejection) -> Result<T, Rejection> {
    let text = std::str::from_utf8(bytes).map_err(|_| invalid)?;
    serde_json::from_str(text)
        .map_err(|e| if is_duplicate(&e) { Rejection::DuplicateMember } else { invalid })
}

/// A JSON value whose objects, at every depth, had no duplicate member names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StrictValue(pub(crate) Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(duplicate(&key));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parses `bytes` as strict JSON.
#[cfg(test)]
pub(crate) fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<StrictValue>(bytes).map(|v| v.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_members_are_rejected_at_any_depth() {
        for doc in [r#"{"a":1,"a":2}"#, r#"{"x":{"b":1,"b":1}}"#, r#"[{"c":[{"d":1,"d":2}]}]"#] {
            let err = from_slice(doc.as_bytes()).expect_err(doc);
            assert!(is_duplicate(&err), "{doc}: {err}");
        }
    }

    #[test]
    fn distinct_members_parse() {
        let v = from_slice(br#"{"a":1,"b":{"a":2},"c":[1,2.5,"x",null,true]}"#).expect("valid");
        assert_eq!(v["b"]["a"], 2);
        assert_eq!(v["c"][1], 2.5);
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        let deep = "[".repeat(5000) + &"]".repeat(5000);
        let err = from_slice(deep.as_bytes()).expect_err("too deep");
        assert!(!is_duplicate(&err));
    }
}

/// An RFC 7519 NumericDate in a JWT a client made (a DPoP proof, a client assertion): whole seconds, or a
/// non-integer number of seconds as RFC 7519 §2 allows and some clients send (`Date.now() / 1000`), rounded
/// down. Negative, non-finite and out-of-range values are refused. Our own tokens always carry whole seconds
/// and are read as integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NumericDate(pub(crate) u64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumericDate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a NumericDate: seconds since the epoch")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumericDate, E> {
                Ok(NumericDate(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumericDate, E> {
                u64::try_from(v).map(NumericDate).map_err(|_| E::custom("a negative NumericDate"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumericDate, E> {
                // 2^53: past it a float no longer holds every whole second.
                if v.is_finite() && (0.0..9_007_199_254_740_992.0).contains(&v) {
                    #[allow(
                        clippy::cast_possible_truncation,
                        clippy::cast_sign_loss,
                        reason = "checked above: finite, non-negative and below 2^53; rounding down is intended"
                    )]
                    Ok(NumericDate(v.floor() as u64))
                } else {
                    Err(E::custom("a NumericDate out of range"))
                }
            }
        }
        d.deserialize_any(V)
    }
}
