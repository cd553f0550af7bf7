//! Typed physical forms of declarative window steps, chosen by the builder
//! when the spec lets it know more than "a record": a key whose type is known
//! to be an integer, and windows whose aggregates are all field-less counts.
//! This is what Flink's SQL planner does with code generation (typed keys and
//! accumulators from the table schema); here it is a choice between generic
//! instantiations of the same window operator.
//!
//! Both forms keep the bytes that are persisted exactly as the dynamic forms
//! write them, so a savepoint taken with one restores into the other (the
//! typed path can appear or disappear when a spec changes, e.g. a generator
//! replaced by a Kafka source):
//! - [`CompactKey`] encodes as the `Value` it holds, so key groups, keyed state and
//!   timers are the same;
//! - [`Counts`] encodes as the accumulators of the dynamic aggregator (one
//!   `Acc::Count` per aggregate).

use serde::de::Error as _;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::FnResult;
use crate::keygroup::{KeyEncodeError, key_group_for_bytes, varint};
use crate::state::keyed::Key;
use crate::windows::{TimeWindow, WindowAggregator};

use super::aggregates::{Acc, Accs, ResultFields};
use super::expr::Expr;
use super::value::Value;

/// A declarative key that is an integer whenever the spec says so (for
/// example a generator's key field): 16 bytes instead of a 32-byte [`Value`],
/// hashed and compared as an `i64`, which window state probes per record.
/// Any other value is kept boxed, so a key of an unexpected type is still
/// keyed correctly, only not compactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompactKey {
    Int(i64),
    /// Never a `Value::Int` (see [`CompactKey::from`]), so equality and
    /// hashing agree with `Value`'s.
    Other(Box<Value>),
}

/// In-memory only (state tables, timers), like `Value`'s: an integer is one
/// write, without the variant first (an `Other` never equals an `Int`, so
/// the two need not hash apart).
impl std::hash::Hash for CompactKey {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            CompactKey::Int(i) => state.write_i64(*i),
            CompactKey::Other(v) => v.hash(state),
        }
    }
}

impl From<Value> for CompactKey {
    fn from(v: Value) -> Self {
        match v {
            Value::Int(i) => CompactKey::Int(i),
            other => CompactKey::Other(Box::new(other)),
        }
    }
}

/// `Value`'s variant index of `Int` in its serde form (postcard writes it as
/// the first byte); `compact_keys_encode_as_values` pins it.
const VALUE_INT_VARIANT: u32 = 2;

impl Serialize for CompactKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CompactKey::Int(i) => s.serialize_newtype_variant("Value", VALUE_INT_VARIANT, "Int", i),
            CompactKey::Other(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for CompactKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(CompactKey::from)
    }
}

/// Keys of declarative windows: how a key becomes the `key` field of a
/// window result, and how it is routed.
pub trait DeclKey: Key + std::fmt::Debug {
    fn to_value(&self) -> Value;
    /// The key group, as `key_group_for_key` defines it for this key's bytes.
    fn key_group(&self, max_parallelism: u32) -> Result<u32, KeyEncodeError>;
    /// The key of an element of a keys-only edge (the builder's
    /// `keys_only`): the element itself, or, for a whole record restored in
    /// flight from a checkpoint written before keys were carried alone, the
    /// key computed from it (a failing key gives the null key, as keying
    /// whole records does). Keys are never maps there, records always are.
    fn carried(&self, key: &Expr) -> Self;
}

impl DeclKey for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
    fn key_group(&self, max_parallelism: u32) -> Result<u32, KeyEncodeError> {
        super::value::key_group_of(self, max_parallelism)
    }
    fn carried(&self, key: &Expr) -> Self {
        match self {
            Value::Map(_) => key.eval(self).unwrap_or(Value::Null),
            k => k.clone(),
        }
    }
}

impl DeclKey for CompactKey {
    fn to_value(&self) -> Value {
        match self {
            CompactKey::Int(i) => Value::Int(*i),
            CompactKey::Other(v) => (**v).clone(),
        }
    }
    /// The bytes of `Value::Int` written by hand, as `key_group_of` does.
    fn key_group(&self, max_parallelism: u32) -> Result<u32, KeyEncodeError> {
        match self {
            CompactKey::Int(i) => {
                let mut num = [0u8; 10];
                let b = varint(((i << 1) ^ (i >> 63)) as u64, &mut num);
                let mut buf = [0u8; 11];
                buf[0] = VALUE_INT_VARIANT as u8;
                buf[1..=b.len()].copy_from_slice(b);
                Ok(key_group_for_bytes(&buf[..=b.len()], max_parallelism))
            }
            CompactKey::Other(v) => super::value::key_group_of(v, max_parallelism),
        }
    }
    fn carried(&self, key: &Expr) -> Self {
        match self {
            CompactKey::Other(v) if matches!(**v, Value::Map(_)) => v.carried(key).into(),
            k => k.clone(),
        }
    }
}

/// The accumulator of a window whose aggregates are all field-less counts:
/// one count (they are all equal), and how many aggregates share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub n: u64,
    pub aggregates: u32,
}

impl Serialize for Counts {
    /// As [`Accs`]: a sequence with one `Acc::Count(n)` per aggregate.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.aggregates as usize))?;
        for _ in 0..self.aggregates {
            seq.serialize_element(&Acc::Count(self.n))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Counts {
    /// Reads [`Accs`]. The window operator has checked the aggregates'
    /// layout (names and operations) before any accumulator is read, so
    /// anything but equal counts here is corrupt state.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let accs = Accs::deserialize(d)?;
        let mut n = None;
        for a in &accs {
            match (a, n) {
                (Acc::Count(c), None) => n = Some(*c),
                (Acc::Count(c), Some(m)) if *c == m => {}
                _ => {
                    return Err(D::Error::custom(format!(
                        "expected equal counts in a count window's state, found {accs:?}"
                    )));
                }
            }
        }
        Ok(Counts {
            n: n.unwrap_or(0),
            aggregates: accs.len() as u32,
        })
    }
}

/// The aggregator of a window of field-less counts only: the typed
/// counterpart of `RecordAggregator` for that case, with the same results
/// and the same state layout string.
#[derive(Clone)]
pub struct CountsAggregator {
    /// The result's fields (the window's and the aggregates').
    pub fields: ResultFields,
    pub aggregates: u32,
    /// `RecordAggregator::state_layout` of the same aggregates.
    pub layout: String,
}

impl<K: DeclKey, In: crate::functions::Data> WindowAggregator<K, In> for CountsAggregator {
    type Acc = Counts;
    type Out = Value;

    fn create(&self) -> Counts {
        Counts {
            n: 0,
            aggregates: self.aggregates,
        }
    }

    fn add(&self, acc: &mut Counts, _value: &In, _ts: i64) -> FnResult {
        acc.n += 1;
        Ok(())
    }

    fn merge(&self, into: &mut Counts, other: Counts) {
        into.n += other.n;
    }

    fn state_layout(&self) -> Option<String> {
        Some(self.layout.clone())
    }

    fn result(&self, key: &K, window: Option<TimeWindow>, acc: &Counts) -> FnResult<Value> {
        let n = i64::try_from(acc.n).unwrap_or(i64::MAX);
        Ok(self.fields.build(key.to_value(), window, |_| Value::Int(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declarative::aggregates::{AggregateDef, RecordAggregator};
    use crate::declarative::value::{key_group_of, record};
    use runnel_spec::AggregateOp;

    fn values() -> Vec<Value> {
        vec![
            Value::Int(0),
            Value::Int(7),
            Value::Int(-1),
            Value::Int(i64::MIN),
            Value::Int(i64::MAX),
            Value::Null,
            Value::UInt(7),
            Value::Float(7.0),
            Value::String("u7".into()),
            record([("k", Value::Int(7))]),
        ]
    }

    /// Keys, key groups, keyed state and timers persist a key's bytes: a
    /// compact key must write exactly what the value it holds writes, route
    /// to the same key group, and read back from those bytes.
    #[test]
    fn compact_keys_encode_as_values() {
        for v in values() {
            let k = CompactKey::from(v.clone());
            let bytes = postcard::to_allocvec(&v).unwrap();
            assert_eq!(postcard::to_allocvec(&k).unwrap(), bytes, "{v:?}");
            let back: CompactKey = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, k);
            assert_eq!(back.to_value(), v);
            for maxp in [1, 128, 1000, 32_768] {
                assert_eq!(
                    k.key_group(maxp).unwrap(),
                    key_group_of(&v, maxp).unwrap(),
                    "{v:?} at max parallelism {maxp}"
                );
            }
        }
        assert_eq!(
            postcard::to_allocvec(&CompactKey::Int(7)).unwrap(),
            [2, 14],
            "Value::Int's variant index, then the zigzag varint"
        );
    }

    /// Equality (and so state lookups) agrees with the values'.
    #[test]
    fn compact_keys_are_equal_when_their_values_are() {
        for a in values() {
            for b in values() {
                assert_eq!(
                    CompactKey::from(a.clone()) == CompactKey::from(b.clone()),
                    a == b,
                    "{a:?} vs {b:?}"
                );
            }
        }
    }

    /// A window of counts restores state written by the dynamic aggregator
    /// (by this runtime with other types, or by an earlier one) and writes
    /// the same bytes.
    #[test]
    fn counts_encode_as_the_dynamic_accumulators() {
        for aggregates in [1u32, 2, 3] {
            let accs: Vec<Acc> = (0..aggregates).map(|_| Acc::Count(41)).collect();
            let bytes = postcard::to_allocvec(&accs).unwrap();
            let counts = Counts { n: 41, aggregates };
            assert_eq!(postcard::to_allocvec(&counts).unwrap(), bytes);
            assert_eq!(postcard::from_bytes::<Counts>(&bytes).unwrap(), counts);
        }
        for bad in [
            vec![Acc::Count(1), Acc::Count(2)],
            vec![Acc::SumInt(1)],
            vec![Acc::Count(1), Acc::Avg { sum: 1.0, count: 1 }],
        ] {
            let bytes = postcard::to_allocvec(&bad).unwrap();
            assert!(
                postcard::from_bytes::<Counts>(&bytes).is_err(),
                "{bad:?} is not the state of a window of counts"
            );
        }
    }

    /// The typed aggregator gives the dynamic one's results and layout.
    #[test]
    fn counts_aggregator_matches_the_record_aggregator() {
        let dynamic = RecordAggregator::new(
            vec![
                AggregateDef {
                    name: "n".into(),
                    op: AggregateOp::Count,
                    of: None,
                },
                AggregateDef {
                    name: "also".into(),
                    op: AggregateOp::Count,
                    of: None,
                },
            ],
            Default::default(),
            "w",
        );
        let typed = dynamic.counts();
        for w in [Some(TimeWindow::new(0, 10)), None] {
            let rec = record([("k", Value::Int(3))]);
            let mut a = WindowAggregator::<Value, Value>::create(&dynamic);
            let mut c = WindowAggregator::<CompactKey, Value>::create(&typed);
            for _ in 0..5 {
                WindowAggregator::<Value, Value>::add(&dynamic, &mut a, &rec, 1).unwrap();
                WindowAggregator::<CompactKey, Value>::add(&typed, &mut c, &rec, 1).unwrap();
            }
            for key in [Value::Int(3), Value::String("u3".into())] {
                let want = record([
                    ("also", Value::Int(5)),
                    ("key", key.clone()),
                    ("n", Value::Int(5)),
                    ("windowEnd", Value::Int(10)),
                    ("windowStart", Value::Int(0)),
                ]);
                let want = match (w, want) {
                    (Some(_), want) => want,
                    (None, Value::Map(mut m)) => {
                        m.remove("windowStart");
                        m.remove("windowEnd");
                        Value::Map(m)
                    }
                    (None, other) => other,
                };
                assert_eq!(
                    WindowAggregator::<Value, Value>::result(&dynamic, &key, w, &a).unwrap(),
                    want
                );
                assert_eq!(
                    WindowAggregator::<CompactKey, Value>::result(
                        &typed,
                        &CompactKey::from(key.clone()),
                        w,
                        &c
                    )
                    .unwrap(),
                    WindowAggregator::<Value, Value>::result(&dynamic, &key, w, &a).unwrap()
                );
            }
            assert_eq!(
                WindowAggregator::<CompactKey, Value>::state_layout(&typed),
                WindowAggregator::<Value, Value>::state_layout(&dynamic)
            );
            assert_eq!(
                postcard::to_allocvec(&c).unwrap(),
                postcard::to_allocvec(&a).unwrap()
            );
        }
    }
}
