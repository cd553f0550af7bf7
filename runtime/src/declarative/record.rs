//! The fields of a record (`Value::Map`): a vector of (name, value) pairs kept
//! sorted by name, with names as [`SmolStr`].
//!
//! Why not `BTreeMap<String, Value>` (what records were before): a record is
//! built on one thread and dropped on another for every event, and a B-tree
//! costs a ~600-byte node plus one `String` allocation per field. This costs
//! one allocation of exactly the fields' size; names up to 23 bytes live
//! inline (longer ones share an `Arc`). The profile of the keyed window count
//! benchmark shows the difference (`docs/benchmarks.md`).
//!
//! Everything observable is as before: iteration in name order, the same
//! ordering and equality, and the same serde form (a map), so keys, state and
//! in-flight records encode to the same bytes and savepoints stay compatible.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
pub use smol_str::SmolStr;

use super::value::Value;

/// Record fields, sorted by name, names unique.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Record(Vec<(SmolStr, Value)>);

impl Record {
    pub fn new() -> Self {
        Record(Vec::new())
    }

    pub fn with_capacity(n: usize) -> Self {
        Record(Vec::with_capacity(n))
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        match self.find(name) {
            Ok(i) => Some(&mut self.0[i].1),
            Err(_) => None,
        }
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Appends a field whose name sorts after every name already present,
    /// without searching: for builders that produce fields in name order
    /// (the generator, per record). A name out of order is inserted where it
    /// belongs instead, so the record stays valid either way.
    pub fn push_in_order(&mut self, name: SmolStr, value: Value) {
        match self.0.last() {
            Some((last, _)) if *last >= name => {
                self.insert(name, value);
            }
            _ => self.0.push((name, value)),
        }
    }

    /// Sets a field; returns the value it replaces (as `BTreeMap::insert`).
    pub fn insert(&mut self, name: impl Into<SmolStr>, value: Value) -> Option<Value> {
        let name = name.into();
        match self.find(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (name, value));
                None
            }
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<Value> {
        self.find(name).ok().map(|i| self.0.remove(i).1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Fields in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&SmolStr, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl ExactSizeIterator<Item = &SmolStr> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl ExactSizeIterator<Item = &Value> {
        self.0.iter().map(|(_, v)| v)
    }
}

impl<K: Into<SmolStr>> FromIterator<(K, Value)> for Record {
    /// Later duplicates win, as when collecting into a `BTreeMap`.
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(iter: I) -> Self {
        let mut v: Vec<(SmolStr, Value)> = iter.into_iter().map(|(k, v)| (k.into(), v)).collect();
        // Stable: equal names keep their input order, so the last is last.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                std::mem::swap(&mut later.1, &mut earlier.1);
                true
            } else {
                false
            }
        });
        Record(v)
    }
}

impl<K: Into<SmolStr>, const N: usize> From<[(K, Value); N]> for Record {
    fn from(fields: [(K, Value); N]) -> Self {
        fields.into_iter().collect()
    }
}

impl IntoIterator for Record {
    type Item = (SmolStr, Value);
    type IntoIter = std::vec::IntoIter<(SmolStr, Value)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Record {
    type Item = &'a (SmolStr, Value);
    type IntoIter = std::slice::Iter<'a, (SmolStr, Value)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k.as_str(), v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Record;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of record fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Record, A::Error> {
                let mut v: Vec<(SmolStr, Value)> =
                    Vec::with_capacity(a.size_hint().unwrap_or(0).min(1024));
                while let Some((k, x)) = a.next_entry::<SmolStr, Value>()? {
                    v.push((k, x));
                }
                // Written by `serialize` the names are sorted and unique
                // already; anything else is normalized like a map would be.
                if v.windows(2).all(|w| w[0].0 < w[1].0) {
                    Ok(Record(v))
                } else {
                    Ok(v.into_iter().collect())
                }
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Pushing in order or out of order gives the record collecting gives.
    #[test]
    fn push_in_order_keeps_records_sorted() {
        let names = ["a", "b", "c"];
        let mut sorted = Record::new();
        for n in names {
            sorted.push_in_order(n.into(), Value::Int(1));
        }
        let mut shuffled = Record::new();
        for n in ["b", "c", "a", "c"] {
            shuffled.push_in_order(n.into(), Value::Int(1));
        }
        let want: Record = names.iter().map(|n| (*n, Value::Int(1))).collect();
        assert_eq!(sorted, want);
        assert_eq!(shuffled, want, "out of order and duplicate names");
    }

    fn sample() -> Vec<(String, Value)> {
        vec![
            ("zeta".into(), Value::Int(1)),
            ("a".into(), Value::String("x".into())),
            (
                "a-name-longer-than-twenty-three-bytes".into(),
                Value::Float(2.5),
            ),
            (
                "m".into(),
                Value::List(vec![Value::Null, Value::Bool(true)]),
            ),
            ("a".into(), Value::Int(7)), // a later duplicate wins
        ]
    }

    #[test]
    fn behaves_like_a_btreemap() {
        let r: Record = sample().into_iter().collect();
        let b: BTreeMap<String, Value> = sample().into_iter().collect();
        assert_eq!(r.len(), b.len());
        let rv: Vec<(String, Value)> = r.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let bv: Vec<(String, Value)> = b.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(rv, bv);
        assert_eq!(r.get("a"), Some(&Value::Int(7)));
        assert_eq!(r.get("nope"), None);
        let mut r2 = r.clone();
        let mut b2 = b.clone();
        assert_eq!(
            r2.insert("b", Value::Null),
            b2.insert("b".into(), Value::Null)
        );
        assert_eq!(
            r2.insert("zeta", Value::Int(2)),
            b2.insert("zeta".into(), Value::Int(2))
        );
        assert_eq!(r2.remove("m"), b2.remove("m"));
        assert_eq!(r2.remove("m"), None);
        let keys: Vec<&str> = r2.keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, b2.keys().map(|k| k.as_str()).collect::<Vec<_>>());
    }

    #[test]
    fn orders_like_a_btreemap() {
        let maps: Vec<Vec<(&str, Value)>> = vec![
            vec![],
            vec![("a", Value::Int(1))],
            vec![("a", Value::Int(2))],
            vec![("a", Value::Int(1)), ("b", Value::Int(0))],
            vec![("b", Value::Int(0))],
            vec![("aa", Value::Null)],
        ];
        for x in &maps {
            for y in &maps {
                let (rx, ry): (Record, Record) = (
                    x.clone().into_iter().collect(),
                    y.clone().into_iter().collect(),
                );
                let bx: BTreeMap<String, Value> =
                    x.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
                let by: BTreeMap<String, Value> =
                    y.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
                assert_eq!(rx.cmp(&ry), bx.cmp(&by), "{x:?} vs {y:?}");
                assert_eq!(rx == ry, bx == by);
            }
        }
    }

    /// The persisted form must not change: keys, window state and in-flight
    /// records written with `BTreeMap<String, Value>` records decode, and new
    /// ones encode to the same bytes (so key groups stay the same too).
    #[test]
    fn same_bytes_as_the_btreemap_encoding() {
        let b: BTreeMap<String, Value> = sample().into_iter().collect();
        let r: Record = sample().into_iter().collect();
        let old = postcard::to_allocvec(&b).unwrap();
        assert_eq!(postcard::to_allocvec(&r).unwrap(), old);
        let back: Record = postcard::from_bytes(&old).unwrap();
        assert_eq!(back, r);
        // JSON in any order, with duplicates resolved like a map.
        let text = r#"{"b": {"Int": 1}, "a": {"Int": 2}, "b": {"Int": 3}}"#;
        let j: Record = serde_json::from_str(text).unwrap();
        assert_eq!(
            j,
            Record::from([("a", Value::Int(2)), ("b", Value::Int(3))])
        );
        let jb: BTreeMap<String, Value> = serde_json::from_str(text).unwrap();
        assert_eq!(
            postcard::to_allocvec(&j).unwrap(),
            postcard::to_allocvec(&jb).unwrap()
        );
    }
}
