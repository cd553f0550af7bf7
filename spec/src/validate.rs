//! Pure validation of a parsed spec: every error, with its path, at once. The
//! runtime runs this again and adds what needs the engine (CEL compilation and
//! type checks).

use std::collections::{BTreeSet, HashMap};

use crate::duration::DurationSpec;
use crate::error::{Path, SpecError};
use crate::types::*;
use crate::version::{MIN_SUPPORTED_VERSION, SPEC_VERSION};

/// Upper bound of `maxParallelism` (Flink's: 2^15).
pub const MAX_MAX_PARALLELISM: u32 = 32_768;

/// Fields that a window adds to its output records.
pub const WINDOW_KEY_FIELD: &str = "key";
pub const WINDOW_START_FIELD: &str = "windowStart";
pub const WINDOW_END_FIELD: &str = "windowEnd";

/// The kind of a step, for messages and default names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    Filter,
    Map,
    KeyBy,
    FlatMap,
    Window,
    Dedup,
    Operator,
}

impl StepKind {
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Filter => "filter",
            StepKind::Map => "map",
            StepKind::KeyBy => "keyBy",
            StepKind::FlatMap => "flatMap",
            StepKind::Window => "window",
            StepKind::Dedup => "dedup",
            StepKind::Operator => "operator",
        }
    }
}

impl StepSpec {
    /// The kinds set on this step (exactly one in a valid spec).
    pub fn kinds(&self) -> Vec<StepKind> {
        let mut k = Vec::new();
        if self.filter.is_some() {
            k.push(StepKind::Filter);
        }
        if self.map.is_some() {
            k.push(StepKind::Map);
        }
        if self.key_by.is_some() {
            k.push(StepKind::KeyBy);
        }
        if self.flat_map.is_some() {
            k.push(StepKind::FlatMap);
        }
        if self.window.is_some() {
            k.push(StepKind::Window);
        }
        if self.dedup.is_some() {
            k.push(StepKind::Dedup);
        }
        if self.operator.is_some() {
            k.push(StepKind::Operator);
        }
        k
    }

    /// The operator name (state identity) of step `index`.
    pub fn uid(&self, index: usize) -> String {
        match (&self.name, self.kinds().first()) {
            (Some(n), _) => n.clone(),
            (None, Some(k)) => format!("{}-{index}", k.name()),
            (None, None) => format!("step-{index}"),
        }
    }
}

struct V {
    errors: Vec<SpecError>,
}

impl V {
    fn push(&mut self, p: &Path, msg: impl Into<String>) {
        self.errors.push(p.err(msg));
    }

    /// A duration that must parse and be > 0 (or >= 0 with `allow_zero`).
    fn duration(&mut self, p: &Path, d: &DurationSpec, allow_zero: bool) -> Option<u64> {
        match d.millis() {
            Ok(0) if !allow_zero => {
                self.push(p, "must be > 0");
                None
            }
            Ok(ms) => Some(ms),
            Err(e) => {
                self.push(p, e);
                None
            }
        }
    }

    fn opt_duration(&mut self, p: &Path, d: &Option<DurationSpec>, allow_zero: bool) {
        if let Some(d) = d {
            self.duration(p, d, allow_zero);
        }
    }

    fn parallelism(&mut self, p: &Path, v: Option<u32>, max: u32) {
        if let Some(v) = v {
            if v == 0 {
                self.push(p, "must be >= 1");
            } else if v > max {
                self.push(p, format!("must be <= maxParallelism ({max})"));
            }
        }
    }

    fn non_empty(&mut self, p: &Path, s: &str) {
        if s.trim().is_empty() {
            self.push(p, "must not be empty");
        }
    }

    fn exactly_one(&mut self, p: &Path, set: &[&str], all: &str) {
        match set.len() {
            1 => {}
            0 => self.push(p, format!("set exactly one of {all}")),
            _ => self.push(
                p,
                format!("set exactly one of {all} (found {})", set.join(", ")),
            ),
        }
    }
}

/// Checks the version rule alone; also used before a document is parsed fully,
/// so that a newer spec is refused with the reason rather than with the first
/// field this runtime does not know.
pub fn check_version(version: u32, path: &Path) -> Result<(), SpecError> {
    if version > SPEC_VERSION {
        return Err(path.err(format!(
            "spec version {version} is newer than this runtime supports (versions \
             {MIN_SUPPORTED_VERSION} to {SPEC_VERSION}); upgrade the runtime image or \
             write the job for version {SPEC_VERSION}"
        )));
    }
    if version < MIN_SUPPORTED_VERSION {
        return Err(path.err(format!(
            "spec version {version} is no longer supported (this runtime runs versions \
             {MIN_SUPPORTED_VERSION} to {SPEC_VERSION}); see docs/job-spec.md for how to \
             migrate"
        )));
    }
    Ok(())
}

/// Validates a spec; `root` prefixes every path (`spec.job` inside a
/// StreamJob, empty for a bare job file).
pub fn validate(spec: &JobSpec, root: &str) -> Vec<SpecError> {
    let root = Path::root(root);
    let mut v = V { errors: Vec::new() };
    if let Err(e) = check_version(spec.version, &root.field("version")) {
        v.errors.push(e);
    }
    v.non_empty(&root.field("name"), &spec.name);
    let max = spec.max_parallelism.unwrap_or(128);
    if let Some(m) = spec.max_parallelism
        && (m == 0 || m > MAX_MAX_PARALLELISM)
    {
        v.push(
            &root.field("maxParallelism"),
            format!("must be between 1 and {MAX_MAX_PARALLELISM}"),
        );
    }
    v.parallelism(&root.field("parallelism"), spec.parallelism, max);
    if let Some(c) = &spec.checkpoint {
        let p = root.field("checkpoint");
        v.duration(&p.field("interval"), &c.interval, false);
        check_storage_uri(&mut v, &p.field("storage"), &c.storage);
        v.opt_duration(&p.field("timeout"), &c.timeout, false);
        v.opt_duration(&p.field("minPause"), &c.min_pause, true);
        if c.retained == Some(0) {
            v.push(&p.field("retained"), "must be >= 1");
        }
        if c.unaligned && c.mode != CheckpointModeSpec::ExactlyOnce {
            v.push(
                &p.field("unaligned"),
                "unaligned checkpoints require mode exactly-once",
            );
        }
    }
    if let Some(w) = &spec.watermark_interval {
        v.duration(&root.field("watermarkInterval"), w, true);
    }
    if let Some(r) = &spec.restart {
        validate_restart(&mut v, &root.field("restart"), r);
    }

    // Operator names identify state; they must be unique across the job.
    let mut names: HashMap<String, String> = HashMap::new();
    let mut unique = |v: &mut V, p: &Path, name: &str| {
        if let Some(first) = names.get(name) {
            v.push(
                p,
                format!("name '{name}' is already used by {first} (names identify state and must be unique)"),
            );
        } else {
            names.insert(name.to_string(), p.as_str().to_string());
        }
    };

    let sources = root.field("sources");
    if spec.sources.is_empty() {
        v.push(&sources, "at least one source is required");
    }
    let mut all_have_watermarks = !spec.sources.is_empty();
    for (i, s) in spec.sources.iter().enumerate() {
        let p = sources.index(i);
        v.non_empty(&p.field("name"), &s.name);
        unique(&mut v, &p.field("name"), &s.name);
        v.parallelism(&p.field("parallelism"), s.parallelism, max);
        let mut set = Vec::new();
        if s.generator.is_some() {
            set.push("generator");
        }
        if s.elements.is_some() {
            set.push("elements");
        }
        if s.kafka.is_some() {
            set.push("kafka");
        }
        v.exactly_one(&p, &set, "generator, elements, kafka");
        if let Some(g) = &s.generator {
            validate_generator(&mut v, &p.field("generator"), g);
        }
        if let Some(k) = &s.kafka {
            validate_kafka_source(&mut v, &p.field("kafka"), k);
        }
        match &s.watermark {
            Some(w) => {
                let wp = p.field("watermark");
                if let Some(t) = &w.timestamp {
                    v.non_empty(&wp.field("timestamp"), t);
                }
                v.opt_duration(
                    &wp.field("maxOutOfOrderness"),
                    &w.max_out_of_orderness,
                    true,
                );
                v.opt_duration(&wp.field("idleness"), &w.idleness, false);
                if w.timestamp.is_none() && s.elements.is_some() {
                    v.push(
                        &wp.field("timestamp"),
                        "elements have no record timestamp: set a timestamp expression",
                    );
                }
                if w.timestamp.is_none()
                    && s.generator.as_ref().is_some_and(|g| g.event_time.is_none())
                {
                    v.push(
                        &wp.field("timestamp"),
                        "set a timestamp expression or the generator's eventTime",
                    );
                }
            }
            None => all_have_watermarks = false,
        }
    }

    let steps = root.field("steps");
    let mut side_outputs: BTreeSet<String> = BTreeSet::new();
    let mut prev_key_by = false;
    for (i, s) in spec.steps.iter().enumerate() {
        let p = steps.index(i);
        let kinds = s.kinds();
        let names_set: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        v.exactly_one(
            &p,
            &names_set,
            "filter, map, keyBy, flatMap, window, dedup, operator",
        );
        if let Some(n) = &s.name {
            v.non_empty(&p.field("name"), n);
        }
        if !kinds.contains(&StepKind::KeyBy) {
            unique(&mut v, &p.field("name"), &s.uid(i));
        }
        v.parallelism(&p.field("parallelism"), s.parallelism, max);
        if let Some(f) = &s.filter {
            v.non_empty(&p.field("filter"), f);
        }
        if let Some(m) = &s.map {
            let mp = p.field("map").field("fields");
            if m.fields.is_empty() {
                v.push(&mp, "at least one field is required");
            }
            for (k, e) in &m.fields {
                v.non_empty(&mp.field(k), e);
            }
        }
        if let Some(k) = &s.key_by {
            v.non_empty(&p.field("keyBy"), k);
            if s.parallelism.is_some() {
                v.push(
                    &p.field("parallelism"),
                    "keyBy only partitions the stream; set parallelism on the next step",
                );
            }
            if s.name.is_some() {
                v.push(&p.field("name"), "keyBy has no state; name the next step");
            }
        }
        if let Some(f) = &s.flat_map {
            let fp = p.field("flatMap");
            v.non_empty(&fp.field("expr"), &f.expr);
            if let Some(a) = &f.as_field {
                v.non_empty(&fp.field("as"), a);
            }
        }
        if let Some(w) = &s.window {
            validate_window(&mut v, &p.field("window"), w, all_have_watermarks);
            if let Some(l) = &w.late_output
                && !side_outputs.insert(l.clone())
            {
                v.push(
                    &p.field("window").field("lateOutput"),
                    format!("side output '{l}' is declared twice"),
                );
            }
            if !prev_key_by {
                v.push(
                    &p.field("window"),
                    "a window must directly follow a keyBy step",
                );
            }
        }
        if let Some(d) = &s.dedup {
            let dp = p.field("dedup");
            v.non_empty(&dp.field("key"), &d.key);
            v.duration(&dp.field("ttl"), &d.ttl, false);
        }
        if let Some(o) = &s.operator {
            v.non_empty(&p.field("operator").field("name"), &o.name);
        }
        if prev_key_by && !kinds.contains(&StepKind::Window) && !kinds.contains(&StepKind::Operator)
        {
            v.push(
                &p,
                "a keyBy step must be followed by a window or operator step",
            );
        }
        prev_key_by = kinds == [StepKind::KeyBy];
    }
    if prev_key_by {
        v.push(
            &steps.index(spec.steps.len() - 1),
            "a keyBy step must be followed by a window or operator step",
        );
    }

    let sinks = root.field("sinks");
    if spec.sinks.is_empty() {
        v.push(&sinks, "at least one sink is required");
    }
    for (i, s) in spec.sinks.iter().enumerate() {
        let p = sinks.index(i);
        v.non_empty(&p.field("name"), &s.name);
        unique(&mut v, &p.field("name"), &s.name);
        let mut set = Vec::new();
        if s.stdout.is_some() {
            set.push("stdout");
        }
        if s.file.is_some() {
            set.push("file");
        }
        if s.kafka.is_some() {
            set.push("kafka");
        }
        v.exactly_one(&p, &set, "stdout, file, kafka");
        if let Some(from) = &s.from
            && !side_outputs.contains(from)
        {
            let known = if side_outputs.is_empty() {
                "none is declared".to_string()
            } else {
                format!(
                    "declared: {}",
                    side_outputs.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            };
            v.push(
                &p.field("from"),
                format!(
                    "unknown side output '{from}' ({known}; a window declares one with lateOutput)"
                ),
            );
        }
        if let Some(f) = &s.file {
            v.non_empty(&p.field("file").field("path"), &f.path);
        }
        if let Some(k) = &s.kafka {
            let kp = p.field("kafka");
            v.non_empty(&kp.field("bootstrapServers"), &k.bootstrap_servers);
            v.non_empty(&kp.field("topic"), &k.topic);
            if let Some(key) = &k.key {
                v.non_empty(&kp.field("key"), key);
            }
            if let Some(f) = &k.key_format {
                validate_format(&mut v, &kp.field("keyFormat"), f);
            }
            validate_format(&mut v, &kp.field("valueFormat"), &k.value_format);
            v.opt_duration(
                &kp.field("transactionTimeout"),
                &k.transaction_timeout,
                false,
            );
            if k.delivery == DeliveryGuarantee::ExactlyOnce && spec.checkpoint.is_none() {
                v.push(
                    &kp.field("delivery"),
                    "exactly-once delivery commits a transaction per checkpoint: configure checkpoint",
                );
            }
            if k.delivery != DeliveryGuarantee::ExactlyOnce {
                if k.transaction_timeout.is_some() {
                    v.push(
                        &kp.field("transactionTimeout"),
                        "only used with delivery exactly-once",
                    );
                }
                if k.transactional_id_prefix.is_some() {
                    v.push(
                        &kp.field("transactionalIdPrefix"),
                        "only used with delivery exactly-once",
                    );
                }
            }
        }
    }
    v.errors
}

fn check_storage_uri(v: &mut V, p: &Path, s: &str) {
    if !(s.starts_with("file://") || s.starts_with("s3://")) {
        v.push(p, format!("'{s}' is not a file:// or s3:// URI"));
    }
}

fn validate_restart(v: &mut V, p: &Path, r: &RestartSpec) {
    let allowed: &[&str] = match r.kind {
        RestartKind::None => &[],
        RestartKind::FixedDelay => &["attempts", "delay"],
        RestartKind::ExponentialBackoff => &["delay", "maxDelay"],
        RestartKind::FailureRate => &["maxFailures", "interval", "delay"],
    };
    let present = [
        ("attempts", r.attempts.is_some()),
        ("delay", r.delay.is_some()),
        ("maxDelay", r.max_delay.is_some()),
        ("maxFailures", r.max_failures.is_some()),
        ("interval", r.interval.is_some()),
    ];
    for (name, set) in present {
        if set && !allowed.contains(&name) {
            v.push(&p.field(name), "not used by this restart type");
        }
    }
    if r.kind == RestartKind::FailureRate {
        if r.max_failures.is_none() {
            v.push(&p.field("maxFailures"), "required by failure-rate");
        }
        if r.interval.is_none() {
            v.push(&p.field("interval"), "required by failure-rate");
        }
    }
    if r.max_failures == Some(0) {
        v.push(&p.field("maxFailures"), "must be >= 1");
    }
    v.opt_duration(&p.field("delay"), &r.delay, true);
    v.opt_duration(&p.field("maxDelay"), &r.max_delay, false);
    v.opt_duration(&p.field("interval"), &r.interval, false);
}

fn validate_generator(v: &mut V, p: &Path, g: &GeneratorSpec) {
    if g.keys == 0 {
        v.push(&p.field("keys"), "must be >= 1");
    }
    if let Some(r) = g.rate_per_second
        && !(r.is_finite() && r > 0.0)
    {
        v.push(&p.field("ratePerSecond"), "must be > 0");
    }
    if let Some(et) = &g.event_time
        && et.step_ms < 0
    {
        v.push(&p.field("eventTime").field("stepMs"), "must be >= 0");
    }
    let fp = p.field("fields");
    if g.fields.is_empty() {
        v.push(&fp, "at least one field is required");
    }
    for (name, f) in &g.fields {
        let p = fp.field(name);
        match f {
            FieldGen::Sequence {
                modulo: Some(m), ..
            } if *m <= 0 => v.push(&p.field("sequence").field("modulo"), "must be > 0"),
            FieldGen::Random { min, max, .. } if min > max => v.push(
                &p.field("random"),
                format!("min ({min}) must be <= max ({max})"),
            ),
            FieldGen::Choice { values, .. } if values.is_empty() => {
                v.push(&p.field("choice").field("values"), "must not be empty")
            }
            FieldGen::Timestamp { step_ms, .. } if *step_ms < 0 => {
                v.push(&p.field("timestamp").field("stepMs"), "must be >= 0")
            }
            _ => {}
        }
    }
}

fn validate_format(v: &mut V, p: &Path, f: &FormatSpec) {
    match (f.kind, &f.schema) {
        (FormatKind::Avro, None) => v.push(&p.field("schema"), "required by type avro"),
        (FormatKind::Avro, Some(s)) => {
            if serde_json::from_str::<serde_json::Value>(s).is_err() {
                v.push(
                    &p.field("schema"),
                    "is not valid JSON (an Avro schema is JSON)",
                );
            }
        }
        (_, Some(_)) => v.push(&p.field("schema"), "only used by type avro"),
        (_, None) => {}
    }
}

fn validate_kafka_source(v: &mut V, p: &Path, k: &KafkaSourceSpec) {
    v.non_empty(&p.field("bootstrapServers"), &k.bootstrap_servers);
    match (&k.topics, &k.topic_pattern) {
        (Some(_), Some(_)) => v.push(p, "set topics or topicPattern, not both"),
        (None, None) => v.push(p, "set topics or topicPattern"),
        (Some(t), None) => {
            if t.is_empty() {
                v.push(&p.field("topics"), "must not be empty");
            }
            for (i, name) in t.iter().enumerate() {
                v.non_empty(&p.field("topics").index(i), name);
            }
        }
        (None, Some(pat)) => v.non_empty(&p.field("topicPattern"), pat),
    }
    let sp = p.field("start");
    let s = &k.start;
    match s.from {
        StartFrom::Timestamp if s.timestamp_ms.is_none() => {
            v.push(&sp.field("timestampMs"), "required by from: timestamp")
        }
        StartFrom::SpecificOffsets if s.offsets.is_empty() => {
            v.push(&sp.field("offsets"), "required by from: specificOffsets")
        }
        _ => {}
    }
    if s.from != StartFrom::Timestamp && s.timestamp_ms.is_some() {
        v.push(&sp.field("timestampMs"), "only used by from: timestamp");
    }
    if s.from != StartFrom::SpecificOffsets && !s.offsets.is_empty() {
        v.push(&sp.field("offsets"), "only used by from: specificOffsets");
    }
    if s.fallback.is_some()
        && !matches!(s.from, StartFrom::GroupOffsets | StartFrom::SpecificOffsets)
    {
        v.push(
            &sp.field("fallback"),
            "only used by from: groupOffsets or specificOffsets",
        );
    }
    if s.from == StartFrom::GroupOffsets && k.group_id.is_none() {
        v.push(&p.field("groupId"), "required to start from group offsets");
    }
    for (i, o) in s.offsets.iter().enumerate() {
        let op = sp.field("offsets").index(i);
        if o.partition < 0 {
            v.push(&op.field("partition"), "must be >= 0");
        }
        if o.offset < 0 {
            v.push(&op.field("offset"), "must be >= 0");
        }
    }
    v.opt_duration(
        &p.field("partitionDiscoveryInterval"),
        &k.partition_discovery_interval,
        false,
    );
    validate_format(v, &p.field("format"), &k.format);
    if let Some(f) = &k.key_format {
        validate_format(v, &p.field("keyFormat"), f);
    }
    let dp = p.field("onDeserializationError");
    match (
        k.on_deserialization_error.policy,
        &k.on_deserialization_error.topic,
    ) {
        (DeserializationErrorPolicy::DeadLetter, None) => {
            v.push(&dp.field("topic"), "required by policy deadLetter")
        }
        (DeserializationErrorPolicy::DeadLetter, Some(t)) => v.non_empty(&dp.field("topic"), t),
        (_, Some(_)) => v.push(&dp.field("topic"), "only used by policy deadLetter"),
        _ => {}
    }
    if let Some(c) = &k.credentials {
        let cp = p.field("credentials");
        let proto = c.security_protocol.to_ascii_lowercase();
        if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&proto.as_str()) {
            v.push(
                &cp.field("securityProtocol"),
                "must be one of plaintext, ssl, sasl_plaintext, sasl_ssl",
            );
        }
        if proto.starts_with("sasl") && (c.username.is_none() || c.password.is_none()) {
            v.push(&cp, "SASL needs username and password secret references");
        }
    }
}

fn validate_window(v: &mut V, p: &Path, w: &WindowSpec, watermarks: bool) {
    let needs = |k: WindowKind| -> (&'static [&'static str], &'static str) {
        match k {
            WindowKind::Tumbling => (&["size"], "tumbling"),
            WindowKind::Sliding => (&["size", "slide"], "sliding"),
            WindowKind::Session => (&["gap"], "session"),
            WindowKind::Count => (&["count"], "count"),
        }
    };
    let (required, kind) = needs(w.kind);
    let present = [
        ("size", w.size.is_some()),
        ("slide", w.slide.is_some()),
        ("gap", w.gap.is_some()),
        ("count", w.count.is_some()),
    ];
    for (name, set) in present {
        if set && !required.contains(&name) {
            v.push(&p.field(name), format!("not used by {kind} windows"));
        }
        if !set && required.contains(&name) {
            v.push(&p.field(name), format!("required by {kind} windows"));
        }
    }
    let size = w
        .size
        .as_ref()
        .and_then(|d| v.duration(&p.field("size"), d, false));
    if let Some(s) = &w.slide
        && let Some(slide) = v.duration(&p.field("slide"), s, false)
        && let Some(size) = size
        && size % slide != 0
    {
        v.push(
            &p.field("slide"),
            format!(
                "must divide size ({size} ms) so that every record falls into size/slide windows"
            ),
        );
    }
    if let Some(g) = &w.gap {
        v.duration(&p.field("gap"), g, false);
    }
    if w.count == Some(0) {
        v.push(&p.field("count"), "must be > 0");
    }
    let event = w.time == TimeKind::Event && w.kind != WindowKind::Count;
    if let Some(l) = &w.allowed_lateness {
        v.duration(&p.field("allowedLateness"), l, true);
        if !event {
            v.push(
                &p.field("allowedLateness"),
                "only event-time windows have late records",
            );
        }
    }
    if w.late_output.is_some() && !event {
        v.push(
            &p.field("lateOutput"),
            "only event-time windows have late records",
        );
    }
    if let Some(l) = &w.late_output {
        v.non_empty(&p.field("lateOutput"), l);
    }
    if event && !watermarks {
        v.push(
            &p.field("time"),
            "event-time windows need a watermark on every source (or use time: processing)",
        );
    }
    let ap = p.field("aggregates");
    if w.aggregates.is_empty() {
        v.push(&ap, "at least one aggregate is required");
    }
    for (name, a) in &w.aggregates {
        let p = ap.field(name);
        if [WINDOW_KEY_FIELD, WINDOW_START_FIELD, WINDOW_END_FIELD].contains(&name.as_str()) {
            v.push(
                &p,
                format!("'{name}' is a field the window adds; choose another name"),
            );
        }
        match (a.op, &a.of) {
            (AggregateOp::Count, Some(_)) => v.push(&p.field("of"), "count takes no expression"),
            (AggregateOp::Count, None) => {}
            (op, None) => v.push(&p.field("of"), format!("required by {}", op.name())),
            (_, Some(e)) => v.non_empty(&p.field("of"), e),
        }
    }
    if let Some(t) = &w.state_ttl {
        v.duration(&p.field("stateTtl").field("ttl"), &t.ttl, false);
    }
}
