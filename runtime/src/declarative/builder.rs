//! Spec to dataflow. The runtime validates the spec again here (the spec
//! crate's checks, then everything that needs the engine: CEL compilation,
//! field references it can check, registered operators and connectors) and
//! reports every error with its path before anything runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use std::time::Duration;

use runnel_spec::validate::{WINDOW_END_FIELD, WINDOW_KEY_FIELD, WINDOW_START_FIELD};
use runnel_spec::{
    CheckpointModeSpec, FieldGen, JobSpec, Path, RestartKind, SpecError, StepSpec, TimeKind,
    TtlUpdate, TtlVisibility, WindowKind,
};

use crate::config::{CheckpointConfig, CheckpointMode, JobConfig};
use crate::error::JobError;
use crate::executor::{JobClient, JobOutcome};
use crate::functions::TimeDomain;
use crate::graph::{DataStream, StreamEnv};
use crate::metrics::JobMetrics;
use crate::restart::RestartStrategy;
use crate::state::ttl::{TtlConfig, UpdateType, Visibility};
use crate::watermark::WatermarkStrategy;
use crate::windows::{self, Dedup, WindowAssigner, WindowOptions};

use super::aggregates::{AggregateDef, RecordAggregator, SKIPPED_VALUE};
use super::expr::Expr;
use super::generator::{ElementsSource, GeneratorSourceFn};
use super::record::{Record, SmolStr};
use super::registry::{ConnectorRegistry, OperatorContext, OperatorInput};
use super::sinks::{FileSink, StdoutSink};
use super::typed::{CompactKey, DeclKey};
use super::value::Value;

/// A job built from a spec, ready to run.
pub struct BuiltJob {
    env: StreamEnv,
    pub name: String,
    /// The physical choices the builder made where the spec let it (typed
    /// keys and accumulators, projection into a source), one line each, as
    /// an EXPLAIN would list them. Logged when the job starts (not when a
    /// spec is only validated).
    pub plan: Vec<String>,
}

impl BuiltJob {
    pub fn config(&self) -> &JobConfig {
        self.env.config()
    }
    /// Adjust the configuration before running (restore settings, clock).
    pub fn config_mut(&mut self) -> &mut JobConfig {
        self.env.config_mut()
    }
    pub fn execute(self) -> Result<JobOutcome, JobError> {
        self.log_plan();
        self.env.execute()
    }
    pub fn execute_async(self) -> Result<JobClient, JobError> {
        self.log_plan();
        self.env.execute_async()
    }
    fn log_plan(&self) {
        for line in &self.plan {
            tracing::info!(job = %self.name, "plan: {line}");
        }
    }
    /// The metrics the job serves (its steps' error counters among them).
    pub fn metrics(&self) -> &Arc<crate::metrics::JobMetrics> {
        self.env.metrics()
    }
    pub fn into_env(self) -> StreamEnv {
        self.log_plan();
        self.env
    }
}

/// Builds a bare job spec (error paths start at the job's fields).
pub fn build(spec: &JobSpec, registry: &ConnectorRegistry) -> Result<BuiltJob, Vec<SpecError>> {
    build_at(spec, registry, "")
}

/// Validates without running (the runtime's full validation).
pub fn validate(spec: &JobSpec, registry: &ConnectorRegistry) -> Vec<SpecError> {
    match build(spec, registry) {
        Ok(_) => Vec::new(),
        Err(e) => e,
    }
}

/// Builds a job whose error paths start with `root` (`spec.job` for a StreamJob).
pub fn build_at(
    spec: &JobSpec,
    registry: &ConnectorRegistry,
    root: &str,
) -> Result<BuiltJob, Vec<SpecError>> {
    build_with(spec, registry, root, true)
}

/// Builds a job without the typed forms (`typed`): every key and
/// accumulator dynamic, as for a spec whose types are unknown (a JSON Kafka
/// source). Same results and state bytes. For side-by-side measurements
/// (`declarative_bench`), and to rule the typed forms out when chasing a
/// problem.
pub fn build_dynamic(
    spec: &JobSpec,
    registry: &ConnectorRegistry,
) -> Result<BuiltJob, Vec<SpecError>> {
    build_with(spec, registry, "", false)
}

fn build_with(
    spec: &JobSpec,
    registry: &ConnectorRegistry,
    root: &str,
    typed: bool,
) -> Result<BuiltJob, Vec<SpecError>> {
    let errors = runnel_spec::validate(spec, root);
    if !errors.is_empty() {
        return Err(errors);
    }
    let env = StreamEnv::new(job_config(spec));
    let mut b = Builder {
        spec,
        registry,
        root: Path::root(root),
        errors: Vec::new(),
        metrics: env.metrics().clone(),
        projected: None,
        plan: Vec::new(),
        typed,
    };
    b.graph(&env);
    if b.errors.is_empty() {
        Ok(BuiltJob {
            env,
            name: spec.name.clone(),
            plan: b.plan,
        })
    } else {
        Err(b.errors)
    }
}

/// Fields known to be in every record at a point of the pipeline, with the
/// type when known (`None` = the set itself is unknown, e.g. after Kafka).
type Known = Option<BTreeMap<String, Option<&'static str>>>;

struct Builder<'a> {
    spec: &'a JobSpec,
    registry: &'a ConnectorRegistry,
    root: Path,
    errors: Vec<SpecError>,
    /// The job's metrics, for the error counters of its steps.
    metrics: Arc<JobMetrics>,
    /// The source's keys, when it emits them instead of records for the
    /// window that is the job's second step (see [`key_projection`]); taken
    /// by that window.
    projected: Option<ProjectedKeys>,
    /// See [`BuiltJob::plan`].
    plan: Vec<String>,
    /// Whether typed forms may be chosen (see [`build_dynamic`]).
    typed: bool,
}

/// A source's stream of keys (see [`key_projection`]), typed as the window
/// will key it.
enum ProjectedKeys {
    Int(DataStream<CompactKey>),
    Dynamic(DataStream<Value>),
}

/// `d` at parallelism `p`, when set.
fn parallel<T: crate::functions::Data>(d: DataStream<T>, p: Option<u32>) -> DataStream<T> {
    match p {
        Some(n) => d.set_parallelism(n),
        None => d,
    }
}

/// A source's watermarks without a timestamp expression (the source's own
/// timestamps), for any element type.
fn plain_watermarks<T>(w: &runnel_spec::WatermarkSpec) -> WatermarkStrategy<T> {
    let st = WatermarkStrategy::<T>::bounded_out_of_orderness(Duration::from_millis(
        w.max_out_of_orderness.as_ref().map(ms).unwrap_or(0),
    ));
    match &w.idleness {
        Some(idle) => st.with_idleness(Duration::from_millis(ms(idle))),
        None => st,
    }
}

fn ms(d: &runnel_spec::DurationSpec) -> u64 {
    // Already validated by the spec crate.
    d.millis().unwrap_or(0)
}

/// The `kind` label of [`JobMetrics::record_errors`] for records on which an
/// expression of a step failed at run time.
pub const EXPRESSION_ERROR: &str = "expression";

/// Counts (on the job's `/metrics`) and logs records on which an expression
/// failed: a spec that type-checks can still meet records it cannot handle
/// (a missing field, a division by zero), and such a record must not stop the
/// job, since it would fail it again after every restart. The log is
/// throttled to powers of two; the counter is exact.
#[derive(Clone)]
struct Dropped {
    step: Arc<str>,
    errors: Counter,
}

impl Dropped {
    fn record(&self, message: &str) {
        let n = self.errors.inc() + 1;
        if n == 1 || n.is_power_of_two() {
            tracing::warn!(step = %self.step, dropped = n, "dropping a record: {message}");
        }
    }
}

fn ttl_config(t: &runnel_spec::StateTtlSpec) -> TtlConfig {
    TtlConfig::new(Duration::from_millis(ms(&t.ttl)))
        .update_type(match t.update {
            TtlUpdate::OnCreateAndWrite => UpdateType::OnCreateAndWrite,
            TtlUpdate::OnReadAndWrite => UpdateType::OnReadAndWrite,
        })
        .visibility(match t.visibility {
            TtlVisibility::NeverReturnExpired => Visibility::NeverReturnExpired,
            TtlVisibility::ReturnExpiredIfNotCleanedUp => Visibility::ReturnExpiredIfNotCleanedUp,
        })
        .cleanup_full_snapshot()
}

impl Builder<'_> {
    /// The expression-error counter of step (or source) `step`.
    fn dropped(&self, step: &str) -> Dropped {
        Dropped {
            step: step.into(),
            errors: self.metrics.record_errors(step, EXPRESSION_ERROR),
        }
    }

    fn err(&mut self, p: &Path, m: impl Into<String>) {
        self.errors.push(p.err(m));
    }
}

/// The engine configuration a spec describes (connectors check their own
/// settings against it, e.g. a transaction timeout against the interval).
pub(crate) fn job_config(s: &JobSpec) -> JobConfig {
    let mut c = JobConfig::new(&s.name);
    if let Some(p) = s.parallelism {
        c.parallelism = p;
    }
    if let Some(m) = s.max_parallelism {
        c.max_parallelism = m;
    }
    if let Some(w) = &s.watermark_interval {
        c.watermark_interval_ms = ms(w);
    }
    if let Some(k) = &s.checkpoint {
        let d = CheckpointConfig::default();
        c.checkpoint = CheckpointConfig {
            interval_ms: Some(ms(&k.interval)),
            storage: Some(k.storage.clone()),
            mode: match k.mode {
                CheckpointModeSpec::ExactlyOnce => CheckpointMode::ExactlyOnce,
                CheckpointModeSpec::AtLeastOnce => CheckpointMode::AtLeastOnce,
            },
            unaligned: k.unaligned,
            timeout_ms: k.timeout.as_ref().map(ms).unwrap_or(d.timeout_ms),
            min_pause_ms: k.min_pause.as_ref().map(ms).unwrap_or(d.min_pause_ms),
            retained: k.retained.unwrap_or(d.retained),
            tolerable_failures: k.tolerable_failures.unwrap_or(d.tolerable_failures),
            ..d
        };
    }
    if let Some(r) = &s.restart {
        let delay = r.delay.as_ref().map(ms).unwrap_or(1000);
        c.restart = match r.kind {
            RestartKind::None => RestartStrategy::None,
            RestartKind::FixedDelay => RestartStrategy::FixedDelay {
                attempts: r.attempts.unwrap_or(3),
                delay_ms: delay,
            },
            RestartKind::ExponentialBackoff => {
                let max = r
                    .max_delay
                    .as_ref()
                    .map(ms)
                    .unwrap_or(60_000)
                    .max(delay.max(1));
                RestartStrategy::ExponentialBackoff {
                    initial_ms: delay.max(1),
                    max_ms: max,
                    multiplier: 2.0,
                    reset_after_ms: max * 2,
                    max_attempts: None,
                }
            }
            RestartKind::FailureRate => RestartStrategy::FailureRate {
                max_failures_per_interval: r.max_failures.unwrap_or(1),
                interval_ms: r.interval.as_ref().map(ms).unwrap_or(60_000),
                delay_ms: delay,
            },
        };
    }
    c
}

impl Builder<'_> {
    fn compile(&mut self, p: &Path, src: &str, known: &Known) -> Option<Expr> {
        match Expr::compile(src) {
            Ok(e) => {
                self.check_fields(p, &e, known);
                Some(e)
            }
            Err(m) => {
                self.err(p, m);
                None
            }
        }
    }

    fn check_fields(&mut self, p: &Path, e: &Expr, known: &Known) {
        let (Some(known), Some(fields)) = (known, e.fields()) else {
            return;
        };
        for f in fields {
            if !known.contains_key(&f) {
                let names: Vec<&str> = known.keys().map(String::as_str).collect();
                self.err(
                    p,
                    format!(
                        "unknown field '{f}' (records here have: {})",
                        names.join(", ")
                    ),
                );
            }
        }
    }

    /// The type of a plain field path expression, when known.
    fn field_type(e: &Expr, known: &Known) -> Option<&'static str> {
        let known = known.as_ref()?;
        let fields = e.fields()?;
        if fields.len() == 1 && e.source() == fields[0] {
            known.get(&fields[0]).copied().flatten()
        } else {
            None
        }
    }

    fn source_fields(s: &runnel_spec::SourceSpec) -> Known {
        if let Some(g) = &s.generator {
            return Some(
                g.fields
                    .iter()
                    .map(|(k, f)| {
                        let t = match f {
                            FieldGen::Key { prefix: Some(_) } => Some("string"),
                            FieldGen::Key { prefix: None }
                            | FieldGen::Sequence { .. }
                            | FieldGen::Random { .. }
                            | FieldGen::Timestamp { .. } => Some("int"),
                            FieldGen::Constant { value } => {
                                Some(Value::from_json(&value.0).type_name())
                            }
                            FieldGen::Choice { values, .. } => {
                                let types: BTreeSet<&str> = values
                                    .iter()
                                    .map(|v| Value::from_json(&v.0).type_name())
                                    .collect();
                                if types.len() == 1 {
                                    types.into_iter().next()
                                } else {
                                    None
                                }
                            }
                        };
                        (k.clone(), t)
                    })
                    .collect(),
            );
        }
        if let Some(els) = &s.elements {
            // Fields present in every element (a field missing from some is
            // null there, which an expression may handle on purpose).
            let mut all: Option<BTreeMap<String, Option<&'static str>>> = None;
            for e in els {
                let serde_json::Value::Object(o) = &e.0 else {
                    return None;
                };
                let this: BTreeMap<String, Option<&'static str>> = o
                    .iter()
                    .map(|(k, v)| (k.clone(), Some(Value::from_json(v).type_name())))
                    .collect();
                all = Some(match all {
                    None => this,
                    Some(prev) => prev
                        .into_iter()
                        .filter(|(k, _)| this.contains_key(k))
                        .map(|(k, t)| {
                            let same = this.get(&k).copied().flatten() == t;
                            (k, if same { t } else { None })
                        })
                        .collect(),
                });
            }
            return all;
        }
        None
    }

    fn graph(&mut self, env: &StreamEnv) {
        let spec = self.spec;
        let root = self.root.clone();
        // Sources.
        let mut stream: Option<DataStream<Value>> = None;
        let mut known: Known = Some(BTreeMap::new());
        let mut first = true;
        for (i, s) in spec.sources.iter().enumerate() {
            let p = root.field("sources").index(i);
            let fields = match &s.kafka {
                Some(k) => self.registry.kafka().and_then(|c| c.fields(k)),
                None => Self::source_fields(s),
            };
            let wm = s.watermark.as_ref().and_then(|w| {
                let mut st = plain_watermarks::<Value>(w);
                if let Some(t) = &w.timestamp {
                    let e = self.compile(&p.field("watermark").field("timestamp"), t, &fields)?;
                    let dropped = self.dropped(&s.name);
                    st = st.with_timestamp_assigner(move |v: &Value, _| match e.eval(v) {
                        Ok(Value::Int(ts)) => ts,
                        Ok(Value::UInt(ts)) => i64::try_from(ts).unwrap_or(i64::MAX),
                        Ok(other) => {
                            dropped.record(&format!(
                                "timestamp `{}` gave {} ({other}), not epoch milliseconds; the record is late",
                                e.source(),
                                other.type_name()
                            ));
                            i64::MIN
                        }
                        Err(m) => {
                            dropped.record(&format!("{m}; the record is late"));
                            i64::MIN
                        }
                    });
                }
                Some(st)
            });
            let mut ds = if let Some(g) = &s.generator {
                let f = GeneratorSourceFn::new(g);
                match key_projection(spec).filter(|_| self.typed) {
                    Some(field) => {
                        // The keys, typed as the window keys them; no stream
                        // of records at all.
                        let int = fields
                            .as_ref()
                            .and_then(|k| k.get(&field).copied().flatten())
                            == Some("int");
                        let wms = s.watermark.as_ref();
                        let keys = if int {
                            f.clone().field_only::<CompactKey>(&field).map(|f| {
                                ProjectedKeys::Int(parallel(
                                    env.add_source_with_watermarks(
                                        &s.name,
                                        f,
                                        wms.map(plain_watermarks),
                                    ),
                                    s.parallelism,
                                ))
                            })
                        } else {
                            f.clone().field_only::<Value>(&field).map(|f| {
                                ProjectedKeys::Dynamic(parallel(
                                    env.add_source_with_watermarks(
                                        &s.name,
                                        f,
                                        wms.map(plain_watermarks),
                                    ),
                                    s.parallelism,
                                ))
                            })
                        };
                        match keys {
                            Some(keys) => {
                                self.plan.push(format!(
                                    "source '{}' emits field '{field}' alone (its only reader is the next window's key)",
                                    s.name
                                ));
                                self.projected = Some(keys);
                                None
                            }
                            // Not reached (`key_projection` checked the
                            // field); whole records are always right.
                            None => Some(env.add_source_with_watermarks(&s.name, f, wm)),
                        }
                    }
                    None => Some(env.add_source_with_watermarks(&s.name, f, wm)),
                }
            } else if let Some(els) = &s.elements {
                let items: Vec<Value> = els.iter().map(|e| Value::from_json(&e.0)).collect();
                Some(env.add_source_with_watermarks(&s.name, ElementsSource::new(items), wm))
            } else if let Some(k) = &s.kafka {
                match self.registry.kafka() {
                    None => {
                        self.err(
                            &p.field("kafka"),
                            "this runtime has no Kafka connector (build it with one registered in ConnectorRegistry)",
                        );
                        None
                    }
                    Some(c) => match c.source(env, &s.name, k, spec, wm) {
                        Ok(ds) => Some(ds),
                        Err(m) => {
                            self.err(&p.field("kafka"), m);
                            None
                        }
                    },
                }
            } else {
                None
            };
            if let Some(par) = s.parallelism {
                ds = ds.map(|d| d.set_parallelism(par));
            }
            known = if first {
                fields
            } else {
                match (known, fields) {
                    // A field in every source, with a type only where all
                    // agree: typed execution relies on it (`typed`).
                    (Some(a), Some(b)) => Some(
                        a.into_iter()
                            .filter_map(|(k, t)| {
                                let other = b.get(&k)?;
                                Some((k, if *other == t { t } else { None }))
                            })
                            .collect(),
                    ),
                    _ => None,
                }
            };
            first = false;
            stream = match (stream, ds) {
                (Some(a), Some(b)) => Some(a.union(b)),
                (a, b) => a.or(b),
            };
        }

        // Steps.
        let mut side: BTreeMap<String, DataStream<Value>> = BTreeMap::new();
        let mut key_by: Option<Expr> = None;
        for (i, step) in spec.steps.iter().enumerate() {
            let p = root.field("steps").index(i);
            let uid = step.uid(i);
            let (s, k) = self.step(
                &p,
                &uid,
                step,
                stream.take(),
                known.clone(),
                key_by.take(),
                &mut side,
            );
            stream = s.0;
            known = s.1;
            key_by = k;
        }

        // Sinks.
        let checkpointing = spec.checkpoint.is_some();
        for (i, s) in spec.sinks.iter().enumerate() {
            let p = root.field("sinks").index(i);
            let input = match &s.from {
                Some(name) => side.get(name).map(|d| d.fork()),
                None => stream.as_ref().map(|d| d.fork()),
            };
            if let Some(k) = &s.kafka
                && let Some(key) = &k.key
            {
                self.compile(&p.field("kafka").field("key"), key, &known);
            }
            let Some(input) = input else { continue };
            if let Some(o) = &s.stdout {
                let prefix = o.prefix.then(|| s.name.clone());
                input.sink(&s.name, StdoutSink { prefix });
            } else if let Some(f) = &s.file {
                let sink = FileSink::new(PathBuf::from(&f.path), checkpointing);
                input.sink(&s.name, sink);
            } else if let Some(k) = &s.kafka {
                match self.registry.kafka() {
                    None => self.err(
                        &p.field("kafka"),
                        "this runtime has no Kafka connector (build it with one registered in ConnectorRegistry)",
                    ),
                    Some(c) => {
                        if let Err(m) = c.sink(input, &s.name, k, spec) {
                            self.err(&p.field("kafka"), m);
                        }
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn step(
        &mut self,
        p: &Path,
        uid: &str,
        step: &StepSpec,
        stream: Option<DataStream<Value>>,
        known: Known,
        key_by: Option<Expr>,
        side: &mut BTreeMap<String, DataStream<Value>>,
    ) -> ((Option<DataStream<Value>>, Known), Option<Expr>) {
        let par = step.parallelism;
        let set_par = |d: DataStream<Value>| match par {
            Some(n) => d.set_parallelism(n),
            None => d,
        };
        if let Some(f) = &step.filter {
            let e = self.compile(&p.field("filter"), f, &known);
            if let Some(t) = e.as_ref().and_then(|e| Self::field_type(e, &known))
                && t != "bool"
            {
                self.err(
                    &p.field("filter"),
                    format!("must give a bool, but the field is a {t}"),
                );
            }
            let out = match (stream, e) {
                (Some(d), Some(e)) => {
                    let dropped = self.dropped(uid);
                    Some(set_par(d.filter(move |v| match e.eval_bool(v) {
                        Ok(b) => b,
                        Err(m) => {
                            dropped.record(&m);
                            false
                        }
                    })))
                }
                _ => None,
            };
            return ((out, known), None);
        }
        if let Some(m) = &step.map {
            let mut exprs = Vec::new();
            let mut out_known: Known = if m.keep {
                known.clone()
            } else {
                Some(BTreeMap::new())
            };
            for (name, src) in &m.fields {
                if let Some(e) =
                    self.compile(&p.field("map").field("fields").field(name), src, &known)
                {
                    let t = Self::field_type(&e, &known);
                    if let Some(k) = &mut out_known {
                        k.insert(name.clone(), t);
                    }
                    exprs.push((name.clone(), e));
                }
            }
            let ok = exprs.len() == m.fields.len();
            let keep = m.keep;
            let out = match stream {
                Some(d) if ok => {
                    let exprs: Arc<[(SmolStr, Expr)]> = exprs
                        .into_iter()
                        .map(|(n, e)| (SmolStr::from(n), e))
                        .collect();
                    let dropped = self.dropped(uid);
                    Some(set_par(d.flat_map(move |v: Value, c| {
                        let mut out = match (&v, keep) {
                            (Value::Map(m), true) => m.clone(),
                            _ => Record::with_capacity(exprs.len()),
                        };
                        for (name, e) in exprs.iter() {
                            match e.eval(&v) {
                                Ok(x) => {
                                    out.insert(name.clone(), x);
                                }
                                Err(m) => {
                                    dropped.record(&m);
                                    return;
                                }
                            }
                        }
                        c.collect(Value::Map(out));
                    })))
                }
                _ => None,
            };
            return ((out, out_known), None);
        }
        if let Some(k) = &step.key_by {
            let e = self.compile(&p.field("keyBy"), k, &known);
            return ((stream, known), e);
        }
        if let Some(f) = &step.flat_map {
            let e = self.compile(&p.field("flatMap").field("expr"), &f.expr, &known);
            if let Some(t) = e.as_ref().and_then(|e| Self::field_type(e, &known))
                && t != "list"
            {
                self.err(
                    &p.field("flatMap").field("expr"),
                    format!("must give a list, but the field is a {t}"),
                );
            }
            let as_field = f.as_field.clone();
            let as_name = as_field.as_deref().map(SmolStr::from);
            let out_known = match (&as_field, known) {
                (Some(a), Some(mut k)) => {
                    k.insert(a.clone(), None);
                    Some(k)
                }
                _ => None,
            };
            let out = match (stream, e) {
                (Some(d), Some(e)) => {
                    let dropped = self.dropped(uid);
                    Some(set_par(d.flat_map(move |v: Value, c| match e.eval(&v) {
                        Ok(Value::List(items)) => {
                            for item in items {
                                match (&as_name, &v, item) {
                                    (Some(a), Value::Map(m), item) => {
                                        let mut m = m.clone();
                                        m.insert(a.clone(), item);
                                        c.collect(Value::Map(m));
                                    }
                                    (None, _, item @ Value::Map(_)) => c.collect(item),
                                    (_, _, item) => dropped.record(&format!(
                                        "flatMap element {item} is not a map (set `as` to name a field for it)"
                                    )),
                                }
                            }
                        }
                        Ok(Value::Null) => {}
                        Ok(other) => dropped.record(&format!(
                            "`{}` gave {} ({other}), not a list",
                            e.source(),
                            other.type_name()
                        )),
                        Err(m) => dropped.record(&m),
                    })))
                }
                _ => None,
            };
            return ((out, out_known), None);
        }
        if let Some(w) = &step.window {
            let wp = p.field("window");
            let mut defs = Vec::new();
            for (name, a) in &w.aggregates {
                let of = match &a.of {
                    Some(src) => {
                        let e = self.compile(
                            &wp.field("aggregates").field(name).field("of"),
                            src,
                            &known,
                        );
                        if let Some(e) = &e
                            && matches!(
                                a.op,
                                runnel_spec::AggregateOp::Sum | runnel_spec::AggregateOp::Avg
                            )
                            && let Some(t) = Self::field_type(e, &known)
                            && !matches!(t, "int" | "uint" | "double")
                        {
                            self.err(
                                &wp.field("aggregates").field(name).field("of"),
                                format!("{} needs numbers, but the field is a {t}", a.op.name()),
                            );
                        }
                        match e {
                            Some(e) => Some(e),
                            None => continue,
                        }
                    }
                    None => None,
                };
                defs.push(AggregateDef {
                    name: name.clone(),
                    op: a.op,
                    of,
                });
            }
            let time = match w.time {
                TimeKind::Event => TimeDomain::EventTime,
                TimeKind::Processing => TimeDomain::ProcessingTime,
            };
            let assigner = match w.kind {
                WindowKind::Tumbling => WindowAssigner::Tumbling {
                    size_ms: w.size.as_ref().map(ms).unwrap_or(1) as i64,
                },
                WindowKind::Sliding => WindowAssigner::Sliding {
                    size_ms: w.size.as_ref().map(ms).unwrap_or(1) as i64,
                    slide_ms: w.slide.as_ref().map(ms).unwrap_or(1) as i64,
                },
                WindowKind::Session => WindowAssigner::Session {
                    gap_ms: w.gap.as_ref().map(ms).unwrap_or(1) as i64,
                },
                WindowKind::Count => WindowAssigner::Count {
                    size: w.count.unwrap_or(1),
                },
            };
            let mut opts = WindowOptions::new(assigner, time)
                .parallelism(par)
                .allowed_lateness_ms(w.allowed_lateness.as_ref().map(ms).unwrap_or(0) as i64);
            if let Some(t) = &w.state_ttl {
                opts = opts.state_ttl(ttl_config(t));
            }
            let mut out_known: BTreeMap<String, Option<&'static str>> = BTreeMap::new();
            out_known.insert(WINDOW_KEY_FIELD.into(), None);
            if w.kind != WindowKind::Count {
                out_known.insert(WINDOW_START_FIELD.into(), Some("int"));
                out_known.insert(WINDOW_END_FIELD.into(), Some("int"));
            }
            for d in &defs {
                let t = match d.op {
                    runnel_spec::AggregateOp::Count | runnel_spec::AggregateOp::DistinctCount => {
                        Some("int")
                    }
                    runnel_spec::AggregateOp::Avg => Some("double"),
                    _ => None,
                };
                out_known.insert(d.name.clone(), t);
            }
            let ok = defs.len() == w.aggregates.len();
            let projected = self.projected.take();
            let input = match (stream, projected) {
                (Some(d), None) => Some(Err(d)),
                (None, Some(keys)) => Some(Ok(keys)),
                _ => None,
            };
            let out = match (input, key_by, ok) {
                (Some(input), Some(key), true) => {
                    let key_type = Self::field_type(&key, &known);
                    // A window that reads nothing of its records but their
                    // key (only field-less counts, late records not kept)
                    // gets the key alone; see `keys_only`.
                    let counts_only = defs
                        .iter()
                        .all(|d| d.op == runnel_spec::AggregateOp::Count && d.of.is_none());
                    let keys_only = key_type.is_some_and(|t| t != "map")
                        && counts_only
                        && w.late_output.is_none();
                    let projected = input.is_ok();
                    if projected && !keys_only {
                        // `key_projection` decides from the same conditions.
                        self.err(
                            &wp,
                            "internal error: the source emits keys for a window that reads \
                             records (build the job with build_dynamic to avoid it, and report it)",
                        );
                    }
                    // Kept with the window's state: keys in flight in an
                    // unaligned checkpoint cannot be replayed as records.
                    let opts = if keys_only {
                        opts.input_kind("keys alone", &["whole records"])
                    } else {
                        opts.input_kind("whole records", &[])
                    };
                    let shape = WindowShape {
                        keys_only,
                        uid,
                        opts,
                        dropped: self.dropped(uid),
                    };
                    let agg = RecordAggregator::new(
                        defs,
                        self.metrics.record_errors(uid, SKIPPED_VALUE),
                        uid,
                    );
                    // Typed forms where the spec tells the types (`typed`).
                    let int_key = self.typed && key_type == Some("int");
                    let counts_only = self.typed && counts_only;
                    self.plan.push(format!(
                        "window '{uid}': {} keys, {} accumulators{}",
                        if int_key {
                            "integer (compact)"
                        } else {
                            "dynamic"
                        },
                        if counts_only { "count" } else { "dynamic" },
                        match (shape.keys_only, projected) {
                            (true, true) => ", keys only, from the source",
                            (true, false) => ", keys only",
                            _ => "",
                        }
                    ));
                    // Keys-only windows count only, so they always get the
                    // count accumulators.
                    let d = match input {
                        // Projected only for keys-only windows of counts
                        // (`key_projection`), so the count accumulators.
                        Ok(ProjectedKeys::Int(keys)) => {
                            return (
                                (
                                    Some(shape.keys_from::<CompactKey, _>(keys, key, agg.counts())),
                                    Some(out_known),
                                ),
                                None,
                            );
                        }
                        Ok(ProjectedKeys::Dynamic(keys)) => {
                            return (
                                (
                                    Some(shape.keys_from::<Value, _>(keys, key, agg.counts())),
                                    Some(out_known),
                                ),
                                None,
                            );
                        }
                        Err(d) => d,
                    };
                    let (results, late) = match (shape.keys_only, int_key, counts_only) {
                        (true, true, _) => {
                            (shape.keys::<CompactKey, _>(d, key, agg.counts()), None)
                        }
                        (true, false, true) => (shape.keys::<Value, _>(d, key, agg.counts()), None),
                        (true, false, false) => (shape.keys::<Value, _>(d, key, agg), None),
                        (false, true, true) => shape.records::<CompactKey, _>(d, key, agg.counts()),
                        (false, true, false) => shape.records::<CompactKey, _>(d, key, agg),
                        (false, false, true) => shape.records::<Value, _>(d, key, agg.counts()),
                        (false, false, false) => shape.records::<Value, _>(d, key, agg),
                    };
                    if let Some(name) = &w.late_output
                        && let Some(late) = late
                    {
                        side.insert(name.clone(), late);
                    }
                    Some(results)
                }
                _ => None,
            };
            return ((out, Some(out_known)), None);
        }
        if let Some(d) = &step.dedup {
            let e = self.compile(&p.field("dedup").field("key"), &d.key, &known);
            let out = match (stream, e) {
                (Some(s), Some(e)) => {
                    let ttl = Duration::from_millis(ms(&d.ttl));
                    Some(set_par(
                        keyed::<Value>(s, e, self.dropped(uid)).process(uid, Dedup::new(ttl)),
                    ))
                }
                _ => None,
            };
            return ((out, known), None);
        }
        if let Some(o) = &step.operator {
            let op = self.registry.operator(&o.name).cloned();
            let Some(op) = op else {
                let names = self.registry.operator_names().join(", ");
                self.err(
                    &p.field("operator").field("name"),
                    format!(
                        "unknown operator '{}' (registered: {})",
                        o.name,
                        if names.is_empty() { "none" } else { &names }
                    ),
                );
                return ((None, None), None);
            };
            let out = match stream {
                Some(d) => {
                    let input = match key_by {
                        Some(k) => OperatorInput::Keyed(keyed::<Value>(d, k, self.dropped(uid))),
                        None => OperatorInput::Stream(d),
                    };
                    let ctx = OperatorContext {
                        name: uid,
                        config: &o.config.0,
                    };
                    match op.apply(input, &ctx) {
                        Ok(d) => Some(set_par(d)),
                        Err(m) => {
                            self.err(&p.field("operator").field("config"), m);
                            None
                        }
                    }
                }
                None => None,
            };
            return ((out, None), None);
        }
        ((stream, known), None)
    }
}

/// Keys records by `key`; a record whose key fails gets the null key and is
/// counted once (the key is computed again to route it, without counting).
fn keyed<K: DeclKey + From<Value>>(
    d: DataStream<Value>,
    key: Expr,
    dropped: Dropped,
) -> crate::graph::KeyedStream<K, Value> {
    let route = key.clone();
    d.key_by_routed(
        move |v: &Value| K::from(route.eval(v).unwrap_or(Value::Null)),
        move |v: &Value| K::from(key_or_null(&key, v, &dropped)),
    )
    .with_key_group(K::key_group)
}

/// How a window step is keyed and named, for building it with a key type
/// and an aggregator chosen from what the spec tells (see `typed`).
struct WindowShape<'a> {
    /// Whether the window reads nothing of a record but its key (see
    /// [`keys_only`]).
    keys_only: bool,
    uid: &'a str,
    opts: WindowOptions,
    dropped: Dropped,
}

impl WindowShape<'_> {
    /// A keys-only window (no late output: its late records would be keys).
    fn keys<K, A>(self, d: DataStream<Value>, key: Expr, agg: A) -> DataStream<Value>
    where
        K: DeclKey + From<Value>,
        A: windows::WindowAggregator<K, K, Out = Value>,
    {
        let keyed = keys_only::<K>(d, key, self.dropped);
        windows::window(keyed, self.uid, self.opts, agg).results
    }

    /// A keys-only window fed by a source that emits the keys
    /// ([`key_projection`]).
    fn keys_from<K, A>(self, keys: DataStream<K>, key: Expr, agg: A) -> DataStream<Value>
    where
        K: DeclKey + From<Value>,
        A: windows::WindowAggregator<K, K, Out = Value>,
    {
        windows::window(keyed_keys(keys, key), self.uid, self.opts, agg).results
    }

    /// A window over whole records: its results and its late records.
    fn records<K, A>(
        self,
        d: DataStream<Value>,
        key: Expr,
        agg: A,
    ) -> (DataStream<Value>, Option<DataStream<Value>>)
    where
        K: DeclKey + From<Value>,
        A: windows::WindowAggregator<K, Value, Out = Value>,
    {
        let keyed = keyed::<K>(d, key, self.dropped);
        let out = windows::window(keyed, self.uid, self.opts, agg);
        (out.results, Some(out.late))
    }
}

/// The key of a record; one whose key fails gets the null key and is counted.
fn key_or_null(key: &Expr, v: &Value, dropped: &Dropped) -> Value {
    match key.eval(v) {
        Ok(k) => k,
        Err(m) => {
            dropped.record(&format!("{m}; using the null key"));
            Value::Null
        }
    }
}

/// Keys records by `key` for a keyed step that reads nothing of a record but
/// its key (a window of field-less counts without a late output): each record
/// is replaced by its key right where it is produced, in a map chained to its
/// producer, and the key is what crosses to the keyed step. So the key is
/// computed once instead of twice, and the record is freed on the thread that
/// built it instead of being sent, read and freed on another core: the
/// largest share of what the declarative window count cost over the Rust API
/// (`docs/benchmarks.md`).
///
/// The keyed step's state and timers are the same as with [`keyed`] (same
/// keys, same key groups). What an unaligned checkpoint keeps in flight on
/// this edge is the key instead of the record, so a checkpoint written before
/// this carries whole records there: [`DeclKey::carried`] recognises them
/// (the caller only takes this path when the key's type is known and not a
/// map, and records are maps) and computes their key as before.
fn keys_only<K: DeclKey + From<Value>>(
    d: DataStream<Value>,
    key: Expr,
    dropped: Dropped,
) -> crate::graph::KeyedStream<K, K> {
    let restored = key.clone();
    keyed_keys(
        d.map_chained(move |v: Value| K::from(key_or_null(&key, &v, &dropped))),
        restored,
    )
}

/// Keys a stream of keys ([`keys_only`], [`key_projection`]); whole records
/// restored in flight are keyed by `key` ([`DeclKey::carried`]).
fn keyed_keys<K: DeclKey + From<Value>>(
    keys: DataStream<K>,
    key: Expr,
) -> crate::graph::KeyedStream<K, K> {
    keys.key_by(move |k: &K| k.carried(&key))
        .with_key_group(K::key_group)
}

/// Projection pushdown into the source: the generated field that a job's
/// only source can emit in place of whole records, because all that reads
/// them is a window that needs their key alone (the [`keys_only`] case), the
/// key is that field, and no timestamp expression reads the records first.
/// The job's output is the same either way; the source only skips building
/// records whose every other field would be dropped unread.
fn key_projection(spec: &JobSpec) -> Option<String> {
    let [source] = spec.sources.as_slice() else {
        return None;
    };
    let g = source.generator.as_ref()?;
    if source
        .watermark
        .as_ref()
        .is_some_and(|w| w.timestamp.is_some())
    {
        return None;
    }
    let [by, window, ..] = spec.steps.as_slice() else {
        return None;
    };
    let key = Expr::compile(by.key_by.as_deref()?).ok()?;
    let w = window.window.as_ref()?;
    let counts_only = w
        .aggregates
        .values()
        .all(|a| a.op == runnel_spec::AggregateOp::Count && a.of.is_none());
    if w.late_output.is_some() || !counts_only {
        return None;
    }
    let field = match key.fields()?.as_slice() {
        [f] if key.source() == f => f.clone(),
        _ => return None,
    };
    // The key's type must be known and not a map (what `keys_only` needs).
    let known = Builder::source_fields(source)?;
    match known.get(&field)? {
        Some(t) if *t != "map" && g.fields.contains_key(&field) => Some(field),
        _ => None,
    }
}

#[cfg(test)]
mod keys_only_tests {
    use super::*;
    use crate::declarative::value::record;
    use crate::keygroup::key_group_for_typed_key;

    /// A record restored in flight from a checkpoint written before keys were
    /// carried alone lands in the same key (and key group) as its key sent
    /// alone.
    #[test]
    fn carried_key_reads_keys_and_old_whole_records_alike() {
        // Value keys (keys of unknown type) and compact ones alike.
        fn check<K: DeclKey + From<Value>>() {
            let carried = |v: Value, key: &Expr| K::from(v).carried(key).to_value();
            let key = Expr::compile("k").unwrap();
            let whole = record([("k", Value::Int(7)), ("x", Value::String("a".into()))]);
            assert_eq!(carried(whole, &key), Value::Int(7));
            assert_eq!(carried(Value::Int(7), &key), Value::Int(7));
            let string_key = Expr::compile("u").unwrap();
            let whole = record([("u", Value::String("u1".into()))]);
            assert_eq!(carried(whole, &string_key), Value::String("u1".into()));
            assert_eq!(
                carried(Value::String("u1".into()), &string_key),
                Value::String("u1".into())
            );
            for maxp in [128, 1000, 32_768] {
                let k = K::from(record([("k", Value::Int(7))])).carried(&key);
                assert_eq!(
                    k.key_group(maxp).unwrap(),
                    key_group_for_typed_key(&Value::Int(7), maxp).unwrap()
                );
            }
            // A record without the key field: the null key, as `keyed` routes it.
            assert_eq!(carried(record([("x", Value::Int(1))]), &key), Value::Null);
        }
        check::<Value>();
        check::<CompactKey>();
    }

    fn projection(sources: &str, steps: &str) -> Option<String> {
        let yaml = format!(
            "version: 1\nname: p\nsources:\n{sources}\nsteps:\n{steps}\nsinks:\n  - name: out\n    stdout: {{}}\n"
        );
        let spec = runnel_spec::load_yaml(&yaml).unwrap();
        key_projection(&spec)
    }

    const GENERATOR: &str = "  - name: g\n    generator: { count: 10, keys: 3, eventTime: { stepMs: 1 }, fields: { k: { key: {} }, u: { key: { prefix: u } }, v: { sequence: {} }, m: { constant: { value: { a: 1 } } } } }\n    watermark: {}";
    const COUNT: &str = "  - window: { type: tumbling, size: 1s, aggregates: { n: { op: count }, m2: { op: count } } }";

    /// The source emits keys only when nothing but the key is read.
    #[test]
    fn keys_are_projected_into_the_source_only_when_nothing_else_is_read() {
        let by = |k: &str| format!("  - keyBy: \"{k}\"\n{COUNT}");
        assert_eq!(projection(GENERATOR, &by("k")), Some("k".into()));
        assert_eq!(
            projection(GENERATOR, &by("u")),
            Some("u".into()),
            "string keys too"
        );
        assert_eq!(
            projection(GENERATOR, &format!("{}\n  - filter: \"n > 1\"", by("k"))),
            Some("k".into()),
            "steps after the window"
        );
        // What reads more than the key, or is not a generated scalar field.
        assert_eq!(projection(GENERATOR, &by("m")), None, "a map key");
        assert_eq!(projection(GENERATOR, &by("k + 1")), None, "an expression");
        assert_eq!(
            projection(GENERATOR, &by("record.k")),
            None,
            "not the plain name"
        );
        assert_eq!(projection(GENERATOR, &by("missing")), None, "not generated");
        assert_eq!(
            projection(
                GENERATOR,
                "  - keyBy: \"k\"\n  - window: { type: tumbling, size: 1s, aggregates: { n: { op: count }, s: { op: sum, of: v } } }"
            ),
            None,
            "a sum reads the record"
        );
        assert_eq!(
            projection(
                GENERATOR,
                "  - keyBy: \"k\"\n  - window: { type: tumbling, size: 1s, lateOutput: late, aggregates: { n: { op: count } } }"
            ),
            None,
            "late records go out whole"
        );
        assert_eq!(
            projection(GENERATOR, &format!("  - filter: \"v > 1\"\n{}", by("k"))),
            None,
            "a step first"
        );
        assert_eq!(
            projection(
                GENERATOR,
                "  - keyBy: \"k\"\n  - operator: { name: custom }"
            ),
            None,
            "not a window"
        );
        let with_ts = GENERATOR.replace("watermark: {}", "watermark: { timestamp: \"v\" }");
        assert_eq!(
            projection(&with_ts, &by("k")),
            None,
            "a timestamp expression reads the record"
        );
        let two = format!("{GENERATOR}\n{}", GENERATOR.replace("name: g", "name: h"));
        assert_eq!(projection(&two, &by("k")), None, "two sources");
        let elements = "  - name: e\n    elements: [ { k: 1 } ]";
        let processing = by("k").replace("size: 1s,", "size: 1s, time: processing,");
        assert_eq!(projection(elements, &processing), None, "not a generator");
        assert_eq!(
            projection(
                &GENERATOR.replace("name: g", "name: g\n    parallelism: 2"),
                &processing
            ),
            Some("k".into()),
            "at any parallelism, in any time domain"
        );
    }

    /// Two sources whose key fields have different types give a key of
    /// unknown type: dynamic keys, not compact integers.
    #[test]
    fn keys_are_typed_only_when_every_source_agrees() {
        let plan = |second_key: &str| {
            let yaml = format!(
                "version: 1\nname: p\nsources:\n{GENERATOR}\n{}\nsteps:\n  - keyBy: \"k\"\n{COUNT}\nsinks:\n  - name: out\n    stdout: {{}}\n",
                GENERATOR
                    .replace("name: g", "name: h")
                    .replace("k: { key: {} }", second_key)
            );
            crate::declarative::load_and_build(&yaml, &ConnectorRegistry::new())
                .unwrap()
                .plan
        };
        assert_eq!(
            plan("k: { sequence: {} }"),
            ["window 'window-1': integer (compact) keys, count accumulators, keys only"]
        );
        assert_eq!(
            plan("k: { key: { prefix: x } }"),
            ["window 'window-1': dynamic keys, count accumulators"]
        );
    }
}
