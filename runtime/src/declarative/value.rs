//! The record type of declarative jobs: a dynamically typed value, serializable
//! with postcard (unaligned checkpoints and keys need that; `serde_json::Value`
//! is not, since postcard cannot deserialize self-describing data), and a valid
//! key (total equality, ordering and hashing, floats by their total order).

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::keygroup::{KeyEncodeError, key_group_for_bytes, key_group_for_key, varint};

pub use super::record::Record;

/// A field value or a whole record (a record is a `Map`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    String(String),
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    List(Vec<Value>),
    Map(Record),
}

impl Value {
    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::UInt(_) => 3,
            Value::Float(_) => 4,
            Value::String(_) => 5,
            Value::Bytes(_) => 6,
            Value::List(_) => 7,
            Value::Map(_) => 8,
        }
    }

    /// A field of a map (None for missing fields and non-maps).
    pub fn get(&self, field: &str) -> Option<&Value> {
        match self {
            Value::Map(m) => m.get(field),
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::UInt(_) => "uint",
            Value::Float(_) => "double",
            Value::String(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }

    /// The value as a number, for sums and averages.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Converts JSON (inline elements, generator constants).
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i)
                } else if let Some(u) = n.as_u64() {
                    Value::UInt(u)
                } else {
                    Value::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            serde_json::Value::String(s) => Value::String(s.clone()),
            serde_json::Value::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(o) => Value::Map(
                o.iter()
                    .map(|(k, v)| (k.as_str(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// Converts to JSON for output. Bytes become a string when they are
    /// UTF-8 and a list of numbers otherwise; non-finite floats become null
    /// (JSON has no NaN).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Int(i) => (*i).into(),
            Value::UInt(u) => (*u).into(),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::String(s) => s.clone().into(),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => s.into(),
                Err(_) => b.iter().map(|x| serde_json::Value::from(*x)).collect(),
            },
            Value::List(l) => l.iter().map(Value::to_json).collect(),
            Value::Map(m) => serde_json::Value::Object(
                m.iter()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Converts to a CEL value.
    pub fn to_cel(&self) -> cel::Value {
        match self {
            Value::Null => cel::Value::Null,
            Value::Bool(b) => cel::Value::Bool(*b),
            Value::Int(i) => cel::Value::Int(*i),
            Value::UInt(u) => cel::Value::UInt(*u),
            Value::Float(f) => cel::Value::Float(*f),
            Value::String(s) => cel::Value::String(Arc::new(s.clone())),
            Value::Bytes(b) => cel::Value::Bytes(Arc::new(b.clone())),
            Value::List(l) => cel::Value::List(Arc::new(l.iter().map(Value::to_cel).collect())),
            Value::Map(m) => {
                let h: std::collections::HashMap<String, cel::Value> =
                    m.iter().map(|(k, v)| (k.to_string(), v.to_cel())).collect();
                h.into()
            }
        }
    }

    /// Converts a CEL result. Timestamps become epoch milliseconds and
    /// durations milliseconds, so they fit event time and JSON output.
    pub fn from_cel(v: &cel::Value) -> Result<Value, String> {
        Ok(match v {
            cel::Value::Null => Value::Null,
            cel::Value::Bool(b) => Value::Bool(*b),
            cel::Value::Int(i) => Value::Int(*i),
            cel::Value::UInt(u) => Value::UInt(*u),
            cel::Value::Float(f) => Value::Float(*f),
            cel::Value::String(s) => Value::String(s.as_str().to_string()),
            cel::Value::Bytes(b) => Value::Bytes(b.as_slice().to_vec()),
            cel::Value::List(l) => {
                Value::List(l.iter().map(Value::from_cel).collect::<Result<_, _>>()?)
            }
            cel::Value::Map(m) => {
                let mut out = Record::with_capacity(m.map.len());
                for (k, v) in m.map.iter() {
                    let k = match k {
                        cel::objects::Key::String(s) => s.as_str().to_string(),
                        cel::objects::Key::Int(i) => i.to_string(),
                        cel::objects::Key::Uint(u) => u.to_string(),
                        cel::objects::Key::Bool(b) => b.to_string(),
                    };
                    out.insert(k, Value::from_cel(v)?);
                }
                Value::Map(out)
            }
            cel::Value::Timestamp(t) => Value::Int(t.timestamp_millis()),
            cel::Value::Duration(d) => Value::Int(d.num_milliseconds()),
            other => {
                return Err(format!(
                    "a CEL {:?} cannot be stored in a record",
                    other.type_of()
                ));
            }
        })
    }
}

/// The same equality as `cmp(..) == Equal` (floats by bits, as their total
/// order), written out because keyed state and timers compare keys on every
/// record and the ordering path was a visible share of that.
impl PartialEq for Value {
    /// Integer keys (the common case) compare inline; everything else takes
    /// the general, recursive path.
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a == b,
            _ => self.eq_general(other),
        }
    }
}

impl Value {
    fn eq_general(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::UInt(a), Value::UInt(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::String(a), Value::String(b)) => a == b,
            (Value::Bytes(a), Value::Bytes(b)) => a == b,
            (Value::List(a), Value::List(b)) => a == b,
            (Value::Map(a), Value::Map(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::UInt(a), Value::UInt(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
            (Value::String(a), Value::String(b)) => a.cmp(b),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::List(a), Value::List(b)) => a.cmp(b),
            (Value::Map(a), Value::Map(b)) => a.cmp(b),
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }
}

/// Only in-memory hash maps (keyed state, timers) see this hash; key groups
/// hash the postcard encoding instead (`keygroup`), so it may change freely.
impl Hash for Value {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Integer keys: one write instead of the rank and then the value.
        if let Value::Int(i) = self {
            state.write_i64(*i);
            return;
        }
        self.rank().hash(state);
        match self {
            Value::Int(_) | Value::Null => {}
            Value::Bool(b) => b.hash(state),
            Value::UInt(u) => u.hash(state),
            Value::Float(f) => f.to_bits().hash(state),
            Value::String(s) => s.hash(state),
            Value::Bytes(b) => b.hash(state),
            Value::List(l) => l.hash(state),
            Value::Map(m) => m.hash(state),
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

/// The key group of a declarative key, as `key_group_for_key` defines it
/// (XXH64 of the key's postcard bytes), with the bytes of integer and short
/// string keys written here instead of through serde: routing a record paid
/// for serde's generic path (`docs/benchmarks.md`). Postcard writes the
/// variant index as a varint (one byte here), then an `i64` as a zigzag
/// varint, a `u64` as a varint and a string as its length (varint) and
/// bytes; `key_group_of_matches_postcard` checks it.
pub(crate) fn key_group_of(v: &Value, max_parallelism: u32) -> Result<u32, KeyEncodeError> {
    const BUF: usize = 64;
    let mut buf = [0u8; BUF];
    let mut num = [0u8; 10];
    let len = match v {
        Value::Int(i) => {
            let b = varint(((*i << 1) ^ (*i >> 63)) as u64, &mut num);
            buf[0] = 2;
            buf[1..=b.len()].copy_from_slice(b);
            1 + b.len()
        }
        Value::UInt(u) => {
            let b = varint(*u, &mut num);
            buf[0] = 3;
            buf[1..=b.len()].copy_from_slice(b);
            1 + b.len()
        }
        Value::String(s) if s.len() + 11 <= BUF => {
            let b = varint(s.len() as u64, &mut num);
            buf[0] = 5;
            buf[1..=b.len()].copy_from_slice(b);
            let start = 1 + b.len();
            buf[start..start + s.len()].copy_from_slice(s.as_bytes());
            start + s.len()
        }
        other => return key_group_for_key(other, max_parallelism),
    };
    Ok(key_group_for_bytes(&buf[..len], max_parallelism))
}

/// Builds a record from (field, value) pairs.
pub fn record<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Map(Record::from(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_postcard() {
        let j = serde_json::json!({"a": 1, "b": [true, null, 2.5, "x"], "c": {"d": -3}});
        let v = Value::from_json(&j);
        assert_eq!(v.to_json(), j);
        let bytes = postcard::to_allocvec(&v).unwrap();
        let back: Value = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn floats_are_totally_ordered_keys() {
        assert_eq!(Value::Float(f64::NAN), Value::Float(f64::NAN));
        assert_ne!(Value::Int(1), Value::Float(1.0));
        assert!(Value::Int(1) < Value::Int(2));
    }

    #[test]
    fn equality_agrees_with_the_order() {
        let vals = [
            Value::Null,
            Value::Bool(false),
            Value::Bool(true),
            Value::Int(-1),
            Value::Int(1),
            Value::UInt(1),
            Value::Float(1.0),
            Value::Float(-0.0),
            Value::Float(0.0),
            Value::Float(f64::NAN),
            Value::Float(-f64::NAN),
            Value::String("a".into()),
            Value::String("b".into()),
            Value::Bytes(vec![1]),
            Value::List(vec![Value::Int(1)]),
            Value::List(vec![Value::Float(f64::NAN)]),
            record([("a", Value::Int(1))]),
            record([("a", Value::Float(1.0))]),
            record([("b", Value::Int(1))]),
        ];
        for a in &vals {
            for b in &vals {
                assert_eq!(a == b, a.cmp(b) == Ordering::Equal, "{a:?} vs {b:?}");
            }
        }
    }

    /// Key groups of declarative keys are persisted (state and timers are
    /// stored per key group): they hash the postcard bytes, pinned here by
    /// hand-derived bytes, never the in-memory `Hash` (which has a fast path
    /// for integers).
    #[test]
    fn key_groups_of_values_are_pinned_to_their_encoding() {
        use crate::keygroup::{key_group_for_bytes, key_group_for_key};
        let cases: [(Value, &[u8]); 6] = [
            (Value::Null, &[0]),
            (Value::Bool(true), &[1, 1]),
            (Value::Int(7), &[2, 14]),
            (Value::UInt(300), &[3, 0xAC, 0x02]),
            (Value::String("u1".into()), &[5, 2, b'u', b'1']),
            (record([("k", Value::Int(3))]), &[8, 1, 1, b'k', 2, 6]),
        ];
        for (v, bytes) in cases {
            assert_eq!(postcard::to_allocvec(&v).unwrap(), bytes, "{v:?}");
            for maxp in [128, 1000, 32_768] {
                assert_eq!(
                    key_group_for_key(&v, maxp).unwrap(),
                    key_group_for_bytes(bytes, maxp),
                    "{v:?}"
                );
            }
        }
    }

    #[test]
    fn key_group_of_matches_postcard() {
        let mut keys = vec![
            Value::Null,
            Value::Bool(false),
            Value::Float(1.5),
            record([("k", Value::Int(3))]),
            Value::List(vec![Value::Int(1)]),
        ];
        for i in [
            0i64,
            1,
            -1,
            63,
            64,
            -64,
            -65,
            127,
            128,
            8191,
            8192,
            i64::MAX,
            i64::MIN,
        ] {
            keys.push(Value::Int(i));
            keys.push(Value::UInt(i as u64));
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            keys.push(Value::Int(x as i64));
            keys.push(Value::Int((x >> (x % 64)) as i64));
            keys.push(Value::UInt(x >> (x % 64)));
        }
        for n in [0, 1, 23, 52, 53, 54, 127, 128, 300] {
            keys.push(Value::String("é".repeat(n / 2) + &"u".repeat(n % 2)));
            keys.push(Value::String("u".repeat(n)));
        }
        for v in &keys {
            let bytes = postcard::to_allocvec(v).unwrap();
            for maxp in [1, 128, 1000, 4096, 32_768] {
                assert_eq!(
                    key_group_of(v, maxp).unwrap(),
                    key_group_for_bytes(&bytes, maxp),
                    "{v:?} maxp={maxp}"
                );
            }
        }
    }

    #[test]
    fn hash_agrees_with_equality() {
        use std::hash::BuildHasher;
        let h = foldhash::fast::FixedState::with_seed(1);
        let vals = [
            Value::Int(1),
            Value::Int(1),
            Value::UInt(1),
            Value::String("1".into()),
            record([("a", Value::Int(1))]),
            record([("a", Value::Int(1))]),
            Value::List(vec![Value::Int(1), Value::Null]),
            Value::List(vec![Value::Int(1), Value::Null]),
        ];
        for a in &vals {
            for b in &vals {
                if a == b {
                    assert_eq!(h.hash_one(a), h.hash_one(b), "{a:?} vs {b:?}");
                }
            }
        }
    }

    #[test]
    fn cel_round_trip() {
        let v = record([("n", Value::Int(3)), ("s", Value::String("x".into()))]);
        assert_eq!(Value::from_cel(&v.to_cel()).unwrap(), v);
    }
}
