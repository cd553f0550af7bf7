//! The declarative data generator: record i is a pure function of i (and the
//! spec), so a restore replays exactly the same records. Subtask s of p
//! generates i = k * p + s; the position k is checkpointed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel_spec::{FieldGen, GeneratorSpec};

use crate::error::{FnResult, UserError};
use crate::functions::{
    CheckpointListener, InitContext, SnapshotContext, SourceFunction, SourceOutput, SourcePoll,
};
use crate::state::operator::{OperatorListState, OperatorListStateDescriptor};

use super::record::{Record, SmolStr};
use super::value::Value;

/// SplitMix64: a well-mixed hash of (seed, i), so "random" fields are
/// reproducible without keeping generator state. Hand-written because it is
/// five lines and must never change (it defines replayed data).
fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Field generators resolved once from the spec.
#[derive(Clone, Debug)]
enum Field {
    Key {
        prefix: Option<String>,
    },
    Sequence {
        start: i64,
        step: i64,
        modulo: Option<i64>,
    },
    Random {
        min: i64,
        span: u64,
        seed: u64,
    },
    Choice {
        values: Vec<Value>,
        seed: u64,
    },
    Constant(Value),
    Timestamp {
        start: i64,
        step: i64,
    },
}

/// Generates record i.
#[derive(Clone, Debug)]
pub struct RecordGenerator {
    keys: u64,
    /// In name order (the spec's map), so records are built without sorting.
    fields: Vec<(SmolStr, Field)>,
    event_time: Option<(i64, i64)>,
}

impl RecordGenerator {
    pub fn new(spec: &GeneratorSpec) -> Self {
        let fields = spec
            .fields
            .iter()
            .map(|(name, f)| {
                let f = match f {
                    FieldGen::Key { prefix } => Field::Key {
                        prefix: prefix.clone(),
                    },
                    FieldGen::Sequence {
                        start,
                        step,
                        modulo,
                    } => Field::Sequence {
                        start: *start,
                        step: *step,
                        modulo: *modulo,
                    },
                    FieldGen::Random { min, max, seed } => Field::Random {
                        min: *min,
                        span: (*max as i128 - *min as i128 + 1).clamp(1, u64::MAX as i128) as u64,
                        seed: *seed,
                    },
                    FieldGen::Choice { values, seed } => Field::Choice {
                        values: values.iter().map(|v| Value::from_json(&v.0)).collect(),
                        seed: *seed,
                    },
                    FieldGen::Constant { value } => Field::Constant(Value::from_json(&value.0)),
                    FieldGen::Timestamp { start_ms, step_ms } => Field::Timestamp {
                        start: *start_ms,
                        step: *step_ms,
                    },
                };
                (SmolStr::from(name.as_str()), f)
            })
            .collect();
        RecordGenerator {
            keys: spec.keys.max(1),
            fields,
            event_time: spec.event_time.as_ref().map(|e| (e.start_ms, e.step_ms)),
        }
    }

    pub fn record(&self, i: u64) -> Value {
        let mut m = Record::with_capacity(self.fields.len());
        for (name, f) in &self.fields {
            m.push_in_order(name.clone(), self.value(f, i));
        }
        Value::Map(m)
    }

    /// The index of a generated field, for [`GeneratorSourceFn::field_only`].
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|(n, _)| n == name)
    }

    /// Field `field` (an index from [`Self::field_index`]) of record i:
    /// exactly the value `record(i)` has there.
    pub fn field(&self, field: usize, i: u64) -> Value {
        match self.fields.get(field) {
            Some((_, f)) => self.value(f, i),
            None => Value::Null,
        }
    }

    fn value(&self, f: &Field, i: u64) -> Value {
        match f {
            Field::Key { prefix: None } => Value::Int((i % self.keys) as i64),
            Field::Key { prefix: Some(p) } => Value::String(format!("{p}{}", i % self.keys)),
            Field::Sequence {
                start,
                step,
                modulo,
            } => {
                let x = start.wrapping_add((i as i64).wrapping_mul(*step));
                Value::Int(match modulo {
                    Some(m) if *m > 0 => x.rem_euclid(*m),
                    _ => x,
                })
            }
            Field::Random { min, span, seed } => {
                Value::Int(min.wrapping_add((mix(*seed, i) % span) as i64))
            }
            Field::Choice { values, seed } => {
                if values.is_empty() {
                    Value::Null
                } else {
                    values[(mix(*seed, i) % values.len() as u64) as usize].clone()
                }
            }
            Field::Constant(v) => v.clone(),
            Field::Timestamp { start, step } => {
                Value::Int(start.wrapping_add((i as i64).wrapping_mul(*step)))
            }
        }
    }

    pub fn timestamp(&self, i: u64) -> Option<i64> {
        self.event_time
            .map(|(s, step)| s.wrapping_add((i as i64).wrapping_mul(step)))
    }
}

/// Position of a subtask: (parallelism, subtask, next local index). Union
/// state, so a restore can check that the partitioning is unchanged.
type Position = (u32, u32, u64);

/// The source function of a `generator` source. It emits records (`T` =
/// [`Value`]), or one field's values converted to `T` (see
/// [`GeneratorSourceFn::field_only`]).
#[derive(Clone)]
pub struct GeneratorSourceFn<T = Value> {
    generator: Arc<RecordGenerator>,
    count: Option<u64>,
    rate_per_subtask: Option<f64>,
    rate_total: Option<f64>,
    next: u64,
    p: u32,
    s: u32,
    started: Option<(Instant, u64)>,
    state: Option<OperatorListState<Position>>,
    /// Emit this field's value instead of the record (see
    /// [`GeneratorSourceFn::field_only`]).
    only: Option<usize>,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl GeneratorSourceFn {
    pub fn new(spec: &GeneratorSpec) -> Self {
        GeneratorSourceFn {
            only: None,
            _t: std::marker::PhantomData,
            generator: Arc::new(RecordGenerator::new(spec)),
            count: spec.count,
            rate_per_subtask: None,
            rate_total: spec.rate_per_second,
            next: 0,
            p: 1,
            s: 0,
            started: None,
            state: None,
        }
    }
}

impl GeneratorSourceFn {
    /// Emits the value of generated field `name` instead of each whole
    /// record: projection pushdown for a consumer that reads that field
    /// alone (the key of a keys-only window, see the builder). Same records
    /// in the same order with the same timestamps and checkpointed position,
    /// only without building and dropping the rest. `None` if the generator
    /// has no such field.
    ///
    /// The values are emitted as `T` (a typed key), so no map stands between
    /// the source and its reader.
    pub fn field_only<T: From<Value>>(self, name: &str) -> Option<GeneratorSourceFn<T>> {
        let only = Some(self.generator.field_index(name)?);
        Some(GeneratorSourceFn {
            generator: self.generator,
            count: self.count,
            rate_per_subtask: self.rate_per_subtask,
            rate_total: self.rate_total,
            next: self.next,
            p: self.p,
            s: self.s,
            started: self.started,
            state: self.state,
            only,
            _t: std::marker::PhantomData,
        })
    }
}

impl<T> CheckpointListener for GeneratorSourceFn<T> {}

impl<T: crate::functions::Data + From<Value>> SourceFunction<T> for GeneratorSourceFn<T> {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> FnResult {
        self.p = ctx.parallelism();
        self.s = ctx.subtask_index();
        self.rate_per_subtask = self.rate_total.map(|r| r / self.p as f64);
        let st = ctx.list_state(&OperatorListStateDescriptor::<Position>::union("position"))?;
        let saved: Vec<Position> = st.get(ctx.operator_state())?.to_vec();
        if let Some((sp, _, _)) = saved.iter().find(|(sp, _, _)| *sp != self.p) {
            return Err(UserError::msg(format!(
                "generator '{}' was checkpointed at parallelism {sp} and cannot resume at \
                 parallelism {}: its sequence is partitioned by subtask (keep the source's \
                 parallelism when rescaling the rest of the job)",
                ctx.operator_name(),
                self.p
            )));
        }
        self.next = saved
            .iter()
            .filter(|(_, ss, _)| *ss == self.s)
            .map(|(_, _, n)| *n)
            .max()
            .unwrap_or(0);
        self.state = Some(st);
        Ok(())
    }

    fn poll(&mut self, out: &mut SourceOutput<'_, T>) -> Result<SourcePoll, UserError> {
        let mut n: u64 = 256;
        if let Some(rate) = self.rate_per_subtask {
            let (t0, k0) = *self.started.get_or_insert((Instant::now(), self.next));
            let allowed = k0 + (t0.elapsed().as_secs_f64() * rate) as u64;
            if allowed <= self.next {
                return Ok(SourcePoll::Idle(Duration::from_millis(5)));
            }
            n = n.min(allowed - self.next);
        }
        let (p, s) = (self.p as u64, self.s as u64);
        for _ in 0..n {
            let i = self.next * p + s;
            if self.count.is_some_and(|c| i >= c) {
                return Ok(SourcePoll::Finished);
            }
            let r = T::from(match self.only {
                Some(f) => self.generator.field(f, i),
                None => self.generator.record(i),
            });
            match self.generator.timestamp(i) {
                Some(ts) => out.collect_with_timestamp(r, ts),
                None => out.collect(r),
            }
            self.next += 1;
        }
        Ok(SourcePoll::MoreAvailable)
    }

    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> FnResult {
        if let Some(st) = &self.state {
            st.update(ctx.operator_state(), vec![(self.p, self.s, self.next)])?;
        }
        Ok(())
    }
}

/// The source of an `elements` source: inline records, one per poll, so that
/// each record gets its own watermark (deterministic event-time behaviour for
/// tests and examples). Subtask s of p emits indices i with i % p == s.
#[derive(Clone)]
pub struct ElementsSource {
    items: Arc<Vec<Value>>,
    next: u64,
    p: u32,
    s: u32,
    state: Option<OperatorListState<Position>>,
}

impl ElementsSource {
    pub fn new(items: Vec<Value>) -> Self {
        ElementsSource {
            items: Arc::new(items),
            next: 0,
            p: 1,
            s: 0,
            state: None,
        }
    }
}

impl CheckpointListener for ElementsSource {}

impl SourceFunction<Value> for ElementsSource {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> FnResult {
        self.p = ctx.parallelism();
        self.s = ctx.subtask_index();
        let st = ctx.list_state(&OperatorListStateDescriptor::<Position>::union("position"))?;
        let saved: Vec<Position> = st.get(ctx.operator_state())?.to_vec();
        if let Some((sp, _, _)) = saved.iter().find(|(sp, _, _)| *sp != self.p) {
            return Err(UserError::msg(format!(
                "elements source '{}' was checkpointed at parallelism {sp} and cannot resume at parallelism {}",
                ctx.operator_name(),
                self.p
            )));
        }
        self.next = saved
            .iter()
            .filter(|(_, ss, _)| *ss == self.s)
            .map(|(_, _, n)| *n)
            .max()
            .unwrap_or(0);
        self.state = Some(st);
        Ok(())
    }

    fn poll(&mut self, out: &mut SourceOutput<'_, Value>) -> Result<SourcePoll, UserError> {
        let i = self.next * self.p as u64 + self.s as u64;
        match usize::try_from(i).ok().and_then(|i| self.items.get(i)) {
            Some(v) => {
                out.collect(v.clone());
                self.next += 1;
                Ok(SourcePoll::MoreAvailable)
            }
            None => Ok(SourcePoll::Finished),
        }
    }

    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> FnResult {
        if let Some(st) = &self.state {
            st.update(ctx.operator_state(), vec![(self.p, self.s, self.next)])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_a_pure_function_of_the_index() {
        let spec: GeneratorSpec = serde_json::from_value(serde_json::json!({
            "keys": 3,
            "eventTime": { "startMs": 1000, "stepMs": 10 },
            "fields": {
                "user": { "key": { "prefix": "u" } },
                "k": { "key": {} },
                "n": { "sequence": { "start": 5, "step": 2, "modulo": 7 } },
                "r": { "random": { "min": 1, "max": 6 } },
                "c": { "choice": { "values": ["a", "b"] } },
                "x": { "constant": { "value": [1, 2] } },
                "ts": { "timestamp": { "stepMs": 100 } }
            }
        }))
        .unwrap();
        let g = RecordGenerator::new(&spec);
        let r = g.record(4);
        assert_eq!(r.get("user"), Some(&Value::String("u1".into())));
        assert_eq!(r.get("k"), Some(&Value::Int(1)));
        assert_eq!(r.get("n"), Some(&Value::Int(13 % 7)));
        assert_eq!(r.get("ts"), Some(&Value::Int(400)));
        assert_eq!(
            r.get("x"),
            Some(&Value::List(vec![Value::Int(1), Value::Int(2)]))
        );
        assert_eq!(g.timestamp(4), Some(1040));
        assert_eq!(g.record(4), r, "deterministic");
        for i in 0..1000 {
            let Some(Value::Int(x)) = g.record(i).get("r").cloned() else {
                panic!()
            };
            assert!((1..=6).contains(&x));
        }
    }
}
