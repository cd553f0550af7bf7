//! The declarative window aggregations over records: count, sum, min, max,
//! avg, first, last and distinct count, all incremental (only accumulators are
//! kept in state) and mergeable (session windows).

use std::collections::BTreeSet;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use runnel_spec::AggregateOp;
use runnel_spec::validate::{WINDOW_END_FIELD, WINDOW_KEY_FIELD, WINDOW_START_FIELD};

use crate::error::FnResult;
use crate::windows::{TimeWindow, WindowAggregator};

use super::expr::Expr;
use super::record::{Record, SmolStr};
use super::typed::{CountsAggregator, DeclKey};
use super::value::Value;

/// The accumulator of one aggregate. Values are boxed (the serde form is
/// the same as unboxed) so that a count or a sum, the common cases, do not
/// carry the room for one: window state keeps accumulators per key and open
/// window, and their size is what the per-record map lookup walks through
/// (a window map entry went from 128 to 96 bytes; the declarative window
/// count from 363 to 339 ns of CPU per record, see `docs/benchmarks.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Acc {
    Count(u64),
    /// Integer sums stay exact until they overflow, then continue as floats.
    SumInt(i64),
    SumFloat(f64),
    Min(Option<Box<Value>>),
    Max(Option<Box<Value>>),
    Avg {
        sum: f64,
        count: u64,
    },
    /// (event timestamp, value): first/last by event time, ties by arrival.
    First(Option<Box<(i64, Value)>>),
    Last(Option<Box<(i64, Value)>>),
    Distinct(BTreeSet<Value>),
}

/// The accumulators of a window step, one per aggregate, kept in window state.
///
/// Inline for up to two aggregates: the window operator used to clone the
/// accumulator out of map state and put it back for every record, and a
/// `Vec` made that an allocation and a free per record (it updates them in
/// place now, `MapState::update_with`). One inline instead of two makes map
/// entries 64 instead of 96 bytes but measured within noise on the window
/// count, and would cost an allocation per key and window for two
/// aggregates. The serde form is a
/// sequence, exactly as `Vec<Acc>` was, so window state written before still
/// restores (see `accumulators_keep_the_vec_encoding`).
pub type Accs = SmallVec<[Acc; 2]>;

/// One named aggregate of a window step.
#[derive(Clone, Debug)]
pub struct AggregateDef {
    pub name: String,
    pub op: AggregateOp,
    pub of: Option<Expr>,
}

/// Compares numbers by value (int 2 < double 2.5), anything else by the
/// total order of values.
fn cmp_values(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if std::mem::discriminant(a) != std::mem::discriminant(b) => {
            x.total_cmp(&y)
        }
        _ => a.cmp(b),
    }
}

impl AggregateDef {
    fn create(&self) -> Acc {
        match self.op {
            AggregateOp::Count => Acc::Count(0),
            AggregateOp::Sum => Acc::SumInt(0),
            AggregateOp::Min => Acc::Min(None),
            AggregateOp::Max => Acc::Max(None),
            AggregateOp::Avg => Acc::Avg { sum: 0.0, count: 0 },
            AggregateOp::First => Acc::First(None),
            AggregateOp::Last => Acc::Last(None),
            AggregateOp::DistinctCount => Acc::Distinct(BTreeSet::new()),
        }
    }

    /// Adds a value (already evaluated; nulls are skipped except by count,
    /// as in SQL). A non-numeric value for sum or avg is an error.
    fn add(&self, acc: &mut Acc, v: Value, ts: i64) -> Result<(), String> {
        if matches!(v, Value::Null) && !matches!(acc, Acc::Count(_)) {
            return Ok(());
        }
        match acc {
            Acc::Count(n) => *n += 1,
            Acc::SumInt(s) => match v {
                Value::Int(i) => match s.checked_add(i) {
                    Some(x) => *s = x,
                    None => *acc = Acc::SumFloat(*s as f64 + i as f64),
                },
                other => {
                    let f = self.number(&other)?;
                    *acc = Acc::SumFloat(*s as f64 + f);
                }
            },
            Acc::SumFloat(s) => *s += self.number(&v)?,
            Acc::Min(m) => {
                if m.as_ref().is_none_or(|x| cmp_values(&v, x).is_lt()) {
                    set_boxed(m, v);
                }
            }
            Acc::Max(m) => {
                if m.as_ref().is_none_or(|x| cmp_values(&v, x).is_gt()) {
                    set_boxed(m, v);
                }
            }
            Acc::Avg { sum, count } => {
                *sum += self.number(&v)?;
                *count += 1;
            }
            Acc::First(f) => {
                if f.as_ref().is_none_or(|b| ts < b.0) {
                    set_boxed(f, (ts, v));
                }
            }
            Acc::Last(l) => {
                if l.as_ref().is_none_or(|b| ts >= b.0) {
                    set_boxed(l, (ts, v));
                }
            }
            Acc::Distinct(set) => {
                set.insert(v);
            }
        }
        Ok(())
    }

    fn number(&self, v: &Value) -> Result<f64, String> {
        v.as_f64().ok_or_else(|| {
            format!(
                "aggregate '{}' ({}) needs numbers, got {} ({v})",
                self.name,
                self.op.name(),
                v.type_name()
            )
        })
    }

    fn merge(into: &mut Acc, other: Acc) {
        match (into, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (a @ Acc::SumInt(_), b) | (a @ Acc::SumFloat(_), b) => {
                let x = match (&*a, &b) {
                    (Acc::SumInt(x), Acc::SumInt(y)) => match x.checked_add(*y) {
                        Some(s) => Acc::SumInt(s),
                        None => Acc::SumFloat(*x as f64 + *y as f64),
                    },
                    _ => Acc::SumFloat(sum_f64(a) + sum_f64(&b)),
                };
                *a = x;
            }
            (Acc::Min(a), Acc::Min(b)) => {
                if let Some(b) = b
                    && a.as_ref().is_none_or(|x| cmp_values(&b, x).is_lt())
                {
                    *a = Some(b);
                }
            }
            (Acc::Max(a), Acc::Max(b)) => {
                if let Some(b) = b
                    && a.as_ref().is_none_or(|x| cmp_values(&b, x).is_gt())
                {
                    *a = Some(b);
                }
            }
            (Acc::Avg { sum, count }, Acc::Avg { sum: s2, count: c2 }) => {
                *sum += s2;
                *count += c2;
            }
            (Acc::First(a), Acc::First(b)) => {
                if let Some(b) = b
                    && a.as_ref().is_none_or(|x| b.0 < x.0)
                {
                    *a = Some(b);
                }
            }
            (Acc::Last(a), Acc::Last(b)) => {
                if let Some(b) = b
                    && a.as_ref().is_none_or(|x| b.0 >= x.0)
                {
                    *a = Some(b);
                }
            }
            (Acc::Distinct(a), Acc::Distinct(b)) => a.extend(b),
            // Accumulators of one definition always have the same kind.
            _ => {}
        }
    }

    fn result(acc: &Acc) -> Value {
        match acc {
            Acc::Count(n) => Value::Int(i64::try_from(*n).unwrap_or(i64::MAX)),
            Acc::SumInt(s) => Value::Int(*s),
            Acc::SumFloat(s) => Value::Float(*s),
            Acc::Min(v) | Acc::Max(v) => v.as_deref().cloned().unwrap_or(Value::Null),
            Acc::Avg { count: 0, .. } => Value::Null,
            Acc::Avg { sum, count } => Value::Float(sum / *count as f64),
            Acc::First(v) | Acc::Last(v) => v.as_ref().map(|b| b.1.clone()).unwrap_or(Value::Null),
            Acc::Distinct(s) => Value::Int(s.len() as i64),
        }
    }
}

/// Replaces a boxed value, reusing the box (`last` replaces it per record).
fn set_boxed<T>(slot: &mut Option<Box<T>>, v: T) {
    match slot {
        Some(b) => **b = v,
        None => *slot = Some(Box::new(v)),
    }
}

fn sum_f64(a: &Acc) -> f64 {
    match a {
        Acc::SumInt(x) => *x as f64,
        Acc::SumFloat(x) => *x,
        _ => 0.0,
    }
}

/// Where each field of a window result comes from.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Key,
    Start,
    End,
    Aggregate(usize),
}

/// The fields of a window's results in name order, worked out once: a
/// result is then built by appending, without searching for each field's
/// place (one result per key and window).
#[derive(Clone, Debug)]
pub struct ResultFields(Arc<[(SmolStr, Slot)]>);

impl ResultFields {
    pub fn new<'a>(aggregates: impl IntoIterator<Item = &'a str>) -> Self {
        let mut f: Vec<(SmolStr, Slot)> = vec![
            (WINDOW_KEY_FIELD.into(), Slot::Key),
            (WINDOW_START_FIELD.into(), Slot::Start),
            (WINDOW_END_FIELD.into(), Slot::End),
        ];
        f.extend(
            aggregates
                .into_iter()
                .enumerate()
                .map(|(i, n)| (SmolStr::from(n), Slot::Aggregate(i))),
        );
        f.sort_by(|a, b| a.0.cmp(&b.0));
        ResultFields(f.into())
    }

    /// The result record; a count window (no time window) has no bounds.
    pub fn build(
        &self,
        key: Value,
        window: Option<TimeWindow>,
        aggregate: impl Fn(usize) -> Value,
    ) -> Value {
        let mut out = Record::with_capacity(self.0.len());
        let mut key = Some(key);
        for (name, slot) in self.0.iter() {
            let v = match (slot, window) {
                (Slot::Key, _) => key.take().unwrap_or_default(),
                (Slot::Start, Some(w)) => Value::Int(w.start),
                (Slot::End, Some(w)) => Value::Int(w.end),
                (Slot::Start | Slot::End, None) => continue,
                (Slot::Aggregate(i), _) => aggregate(*i),
            };
            out.push_in_order(name.clone(), v);
        }
        Value::Map(out)
    }
}

/// The `kind` label of [`crate::metrics::JobMetrics::record_errors`] for
/// values a window aggregate skipped (see [`RecordAggregator`]).
pub const SKIPPED_VALUE: &str = "aggregate_value";

/// All aggregates of a window step. Bad values (a string to sum, an
/// expression that fails) are skipped and counted, never fail the job: the
/// same record would fail it again after every restart.
#[derive(Clone)]
pub struct RecordAggregator {
    defs: Arc<[AggregateDef]>,
    fields: ResultFields,
    /// Values skipped (one per aggregate and record), e.g. the job's
    /// `record_errors(step, SKIPPED_VALUE)` counter.
    skipped: Counter,
    step: Arc<str>,
}

impl RecordAggregator {
    /// `skipped`: counts values skipped (one per aggregate and record), e.g.
    /// the job's `record_errors(step, SKIPPED_VALUE)` counter.
    pub fn new(defs: Vec<AggregateDef>, skipped: Counter, step: &str) -> Self {
        RecordAggregator {
            fields: ResultFields::new(defs.iter().map(|d| d.name.as_str())),
            defs: defs.into(),
            skipped,
            step: step.into(),
        }
    }

    fn skip(&self, message: &str) {
        let n = self.skipped.inc() + 1;
        if n == 1 || n.is_power_of_two() {
            tracing::warn!(step = %self.step, skipped = n, "skipping a value: {message}");
        }
    }
}

impl RecordAggregator {
    /// The typed aggregator of the same aggregates, when all are field-less
    /// counts (see `typed`).
    pub fn counts(&self) -> CountsAggregator {
        CountsAggregator {
            fields: self.fields.clone(),
            aggregates: self.defs.len() as u32,
            layout: WindowAggregator::<Value, Value>::state_layout(self).unwrap_or_default(),
        }
    }
}

impl<K: DeclKey> WindowAggregator<K, Value> for RecordAggregator {
    type Acc = Accs;
    type Out = Value;

    fn create(&self) -> Accs {
        self.defs.iter().map(AggregateDef::create).collect()
    }

    fn add(&self, acc: &mut Accs, value: &Value, ts: i64) -> FnResult {
        for (d, a) in self.defs.iter().zip(acc.iter_mut()) {
            let v = match &d.of {
                // A field-less count reads nothing of the record: counted
                // here, without a `Value` made and dropped per record.
                None => match a {
                    Acc::Count(n) => {
                        *n += 1;
                        continue;
                    }
                    _ => Value::Null,
                },
                Some(e) => match e.eval(value) {
                    Ok(v) => v,
                    Err(m) => {
                        self.skip(&m);
                        continue;
                    }
                },
            };
            if let Err(m) = d.add(a, v, ts) {
                self.skip(&m);
            }
        }
        Ok(())
    }

    fn merge(&self, into: &mut Accs, other: Accs) {
        for (a, b) in into.iter_mut().zip(other) {
            AggregateDef::merge(a, b);
        }
    }

    /// The aggregates by name and operation, in accumulator order. Not the
    /// expressions: a fixed or changed `of` keeps its state (as a changed
    /// Rust aggregator would), only a different set of accumulators is
    /// refused.
    fn state_layout(&self) -> Option<String> {
        Some(
            self.defs
                .iter()
                .map(|d| format!("{}: {}", d.name, d.op.name()))
                .collect::<Vec<_>>()
                .join(", "),
        )
    }

    fn result(&self, key: &K, window: Option<TimeWindow>, acc: &Accs) -> FnResult<Value> {
        Ok(self.fields.build(key.to_value(), window, |i| {
            acc.get(i).map(AggregateDef::result).unwrap_or_default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(op: AggregateOp) -> AggregateDef {
        AggregateDef {
            name: "a".into(),
            op,
            of: Some(Expr::compile("v").unwrap()),
        }
    }

    fn run(op: AggregateOp, vals: &[(i64, Value)]) -> Value {
        let d = def(op);
        let mut acc = d.create();
        for (ts, v) in vals {
            d.add(&mut acc, v.clone(), *ts).unwrap();
        }
        AggregateDef::result(&acc)
    }

    #[test]
    fn each_aggregate() {
        let vals = [
            (5, Value::Int(3)),
            (1, Value::Int(7)),
            (9, Value::Null),
            (3, Value::Int(3)),
            (7, Value::Float(0.5)),
        ];
        assert_eq!(run(AggregateOp::Count, &vals), Value::Int(5));
        assert_eq!(run(AggregateOp::Sum, &vals), Value::Float(13.5));
        assert_eq!(run(AggregateOp::Sum, &vals[..4]), Value::Int(13));
        assert_eq!(run(AggregateOp::Min, &vals), Value::Float(0.5));
        assert_eq!(run(AggregateOp::Max, &vals), Value::Int(7));
        assert_eq!(run(AggregateOp::Avg, &vals), Value::Float(13.5 / 4.0));
        assert_eq!(run(AggregateOp::First, &vals), Value::Int(7));
        assert_eq!(run(AggregateOp::Last, &vals), Value::Float(0.5));
        assert_eq!(run(AggregateOp::DistinctCount, &vals), Value::Int(3));
        assert_eq!(run(AggregateOp::Avg, &[]), Value::Null);
        assert_eq!(run(AggregateOp::Min, &[]), Value::Null);
    }

    #[test]
    fn sums_overflow_into_floats_and_merge() {
        let d = def(AggregateOp::Sum);
        let mut a = d.create();
        d.add(&mut a, Value::Int(i64::MAX), 0).unwrap();
        d.add(&mut a, Value::Int(1), 0).unwrap();
        assert_eq!(a, Acc::SumFloat(i64::MAX as f64 + 1.0));
        let mut x = Acc::SumInt(2);
        AggregateDef::merge(&mut x, Acc::SumInt(3));
        assert_eq!(x, Acc::SumInt(5));
        let mut f = Acc::First(Some(Box::new((5, Value::Int(1)))));
        AggregateDef::merge(&mut f, Acc::First(Some(Box::new((2, Value::Int(2))))));
        assert_eq!(AggregateDef::result(&f), Value::Int(2));
    }

    /// Window state written as `Vec<Acc>` (before `Accs`) restores, and new
    /// state is written in the same bytes.
    #[test]
    fn accumulators_keep_the_vec_encoding() {
        let old: Vec<Acc> = vec![
            Acc::Count(3),
            Acc::SumInt(-4),
            Acc::Min(Some(Box::new(crate::declarative::value::record([(
                "a",
                Value::String("x".into()),
            )])))),
            Acc::Last(Some(Box::new((9, Value::Float(1.5))))),
            Acc::Distinct([Value::Int(1), Value::Int(2)].into_iter().collect()),
        ];
        let bytes = postcard::to_allocvec(&old).unwrap();
        let new: Accs = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(new.as_slice(), old.as_slice());
        assert_eq!(postcard::to_allocvec(&new).unwrap(), bytes);
        let one: Accs = smallvec::smallvec![Acc::Count(7)];
        assert_eq!(
            postcard::to_allocvec(&one).unwrap(),
            postcard::to_allocvec(&vec![Acc::Count(7)]).unwrap()
        );
    }

    /// Boxing the values changed the memory layout only: state written with
    /// the unboxed accumulators (this enum, as `Acc` was) restores, and new
    /// state is written in the same bytes.
    #[test]
    fn boxed_accumulators_keep_the_unboxed_encoding() {
        #[derive(Debug, Serialize, Deserialize)]
        enum Unboxed {
            Count(u64),
            SumInt(i64),
            SumFloat(f64),
            Min(Option<Value>),
            Max(Option<Value>),
            Avg { sum: f64, count: u64 },
            First(Option<(i64, Value)>),
            Last(Option<(i64, Value)>),
            Distinct(BTreeSet<Value>),
        }
        let s = || Value::String("x".into());
        let old = vec![
            Unboxed::Count(3),
            Unboxed::SumInt(-4),
            Unboxed::SumFloat(0.5),
            Unboxed::Min(Some(s())),
            Unboxed::Max(None),
            Unboxed::Avg { sum: 1.5, count: 2 },
            Unboxed::First(Some((-7, s()))),
            Unboxed::Last(None),
            Unboxed::Distinct([Value::Int(1), s()].into_iter().collect()),
        ];
        let new: Vec<Acc> = vec![
            Acc::Count(3),
            Acc::SumInt(-4),
            Acc::SumFloat(0.5),
            Acc::Min(Some(Box::new(s()))),
            Acc::Max(None),
            Acc::Avg { sum: 1.5, count: 2 },
            Acc::First(Some(Box::new((-7, s())))),
            Acc::Last(None),
            Acc::Distinct([Value::Int(1), s()].into_iter().collect()),
        ];
        let bytes = postcard::to_allocvec(&old).unwrap();
        assert_eq!(postcard::to_allocvec(&new).unwrap(), bytes);
        let back: Accs = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.as_slice(), new.as_slice());
    }

    #[test]
    fn last_replaces_its_value_in_place() {
        let d = def(AggregateOp::Last);
        let mut a = d.create();
        d.add(&mut a, Value::Int(1), 5).unwrap();
        d.add(&mut a, Value::Int(2), 4).unwrap();
        assert_eq!(AggregateDef::result(&a), Value::Int(1), "older timestamp");
        d.add(&mut a, Value::Int(3), 5).unwrap();
        assert_eq!(
            AggregateDef::result(&a),
            Value::Int(3),
            "ties go to the later"
        );
    }

    #[test]
    fn non_numbers_are_errors_for_sum() {
        let d = def(AggregateOp::Sum);
        let mut a = d.create();
        let e = d.add(&mut a, Value::String("x".into()), 0).unwrap_err();
        assert_eq!(e, "aggregate 'a' (sum) needs numbers, got string (\"x\")");
    }
}
