//! The keyed window operator: assigns records to windows, keeps one
//! accumulator per key and window in keyed map state, fires on event- or
//! processing-time timers, re-fires for late records within the allowed
//! lateness and hands later ones to a side output. State and timers are keyed
//! state, so a window restores mid-way from a checkpoint or savepoint, at any
//! parallelism.

use serde::{Deserialize, Serialize};

use crate::error::{FnResult, UserError};
use crate::functions::{
    CheckpointListener, InitContext, KeyedContext, KeyedProcessFunction, SnapshotContext,
    TimeDomain,
};
use crate::state::keyed::{Key, MapState, MapStateDescriptor, ValueState, ValueStateDescriptor};
use crate::state::operator::{OperatorListState, OperatorListStateDescriptor};
use crate::state::ttl::TtlConfig;

use super::aggregate::WindowAggregator;
use super::assigner::{TimeWindow, WindowAssigner, cleanup_time, is_late, merge_session};

/// What the window operator emits: results, and (as a side output) records
/// that arrived too late for any window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WindowOutput<Out, In> {
    Result(Out),
    Late(In),
}

/// Window configuration.
#[derive(Clone, Debug)]
pub struct WindowOptions {
    pub assigner: WindowAssigner,
    pub time: TimeDomain,
    /// Event time only: how long after a window fires records still update it.
    pub allowed_lateness_ms: i64,
    /// TTL of the window state (processing time).
    pub state_ttl: Option<TtlConfig>,
    /// Parallelism of the window (default: the job's).
    pub parallelism: Option<u32>,
    /// What the window's input carries (see [`WindowOptions::input_kind`]).
    pub input_kind: Option<String>,
}

impl WindowOptions {
    pub fn new(assigner: WindowAssigner, time: TimeDomain) -> Self {
        WindowOptions {
            assigner,
            time,
            allowed_lateness_ms: 0,
            state_ttl: None,
            parallelism: None,
            input_kind: None,
        }
    }
    /// Names what this window's input carries when that can change between
    /// versions of a job while its state stays compatible (the declarative
    /// builder sends a window of counts each record's key alone, and whole
    /// records otherwise). The name is kept with the window's state, and a
    /// restore that would replay records in flight written under another
    /// name is refused (records restored in flight were sent by the old job;
    /// read as the new kind they would be keyed wrongly). Savepoints hold no
    /// records in flight, so they restore across kinds. `accepts` lists old
    /// kinds whose in-flight records this input still reads correctly.
    pub fn input_kind(mut self, kind: &str, accepts: &[&str]) -> Self {
        let mut k = kind.to_string();
        for a in accepts {
            k.push('|');
            k.push_str(a);
        }
        self.input_kind = Some(k);
        self
    }
    pub fn parallelism(mut self, p: Option<u32>) -> Self {
        self.parallelism = p;
        self
    }
    pub fn allowed_lateness_ms(mut self, ms: i64) -> Self {
        self.allowed_lateness_ms = ms;
        self
    }
    pub fn state_ttl(mut self, ttl: TtlConfig) -> Self {
        self.state_ttl = Some(ttl);
        self
    }
}

/// Operator list state holding [`WindowAggregator::state_layout`].
const LAYOUT_STATE: &str = "window-aggregates";

/// Operator list state holding the window's input kind
/// ([`WindowOptions::input_kind`]).
const INPUT_STATE: &str = "window-input";

/// Whether records in flight written by a window whose input was `old` can
/// be replayed into one whose input is `current` (`kind|accepted|...`, as
/// [`WindowOptions::input_kind`] encodes it). Unknown (no old kind: a
/// checkpoint written before kinds were kept) is accepted, as before.
pub(crate) fn in_flight_compatible(old: Option<&str>, current: &str) -> bool {
    let Some(old) = old else { return true };
    let old_kind = old.split('|').next().unwrap_or(old);
    current.split('|').any(|k| k == old_kind)
}

/// A keyed window with an incremental aggregation.
pub struct WindowOperator<K, In, A: WindowAggregator<K, In>> {
    opts: WindowOptions,
    agg: A,
    windows: Option<MapState<TimeWindow, A::Acc>>,
    counts: Option<ValueState<(u64, A::Acc)>>,
    /// The aggregator's state layout and where it is kept (see
    /// [`WindowAggregator::state_layout`]).
    layout: Option<(OperatorListState<String>, String)>,
    /// The input kind and where it is kept ([`WindowOptions::input_kind`]).
    input: Option<(OperatorListState<String>, String)>,
    _p: std::marker::PhantomData<fn(K, In)>,
}

impl<K, In, A: WindowAggregator<K, In>> Clone for WindowOperator<K, In, A> {
    fn clone(&self) -> Self {
        WindowOperator {
            opts: self.opts.clone(),
            agg: self.agg.clone(),
            windows: self.windows.clone(),
            counts: self.counts.clone(),
            layout: self.layout.clone(),
            input: self.input.clone(),
            _p: std::marker::PhantomData,
        }
    }
}

impl<K, In, A: WindowAggregator<K, In>> WindowOperator<K, In, A> {
    pub fn new(opts: WindowOptions, agg: A) -> Self {
        WindowOperator {
            opts,
            agg,
            windows: None,
            counts: None,
            layout: None,
            input: None,
            _p: std::marker::PhantomData,
        }
    }
}

impl<K, In, A: WindowAggregator<K, In>> CheckpointListener for WindowOperator<K, In, A> {}

/// Whether adding a record to a window must (re-)register its timers.
///
/// A window that already had state got its timers when its first record
/// arrived: the firing timer (unless it had fired already) and the cleanup
/// timer. Both stay until they fire, and firing the cleanup timer removes the
/// state, so while the state exists they exist. Registering them again for
/// every record cost a timer-queue lookup plus hashing and cloning the key
/// per record (see `docs/benchmarks.md`, declarative section). The exception is a window that the watermark has passed
/// since (a late firing): its firing timer is gone and must not come back, so
/// only the cleanup timer is re-registered then, as before. Session windows
/// always register (a merged window is a new window).
pub(crate) fn timers_needed(had_state: bool, fired: bool) -> bool {
    !had_state || fired
}

fn not_initialized() -> UserError {
    UserError::msg("window state is not initialized")
}

type Ctx<'a, 'b, K, Out, In> = KeyedContext<'a, K, WindowOutput<Out, In>>;

impl<K, In, A> WindowOperator<K, In, A>
where
    K: Key,
    In: crate::functions::Data,
    A: WindowAggregator<K, In>,
{
    fn register(&self, ctx: &mut Ctx<'_, '_, K, A::Out, In>, ts: i64) {
        match self.opts.time {
            TimeDomain::EventTime => ctx.register_event_time_timer(ts),
            TimeDomain::ProcessingTime => ctx.register_processing_time_timer(ts),
        }
    }

    fn delete(&self, ctx: &mut Ctx<'_, '_, K, A::Out, In>, ts: i64) {
        match self.opts.time {
            TimeDomain::EventTime => ctx.delete_event_time_timer(ts),
            TimeDomain::ProcessingTime => ctx.delete_processing_time_timer(ts),
        }
    }

    /// The current time in the window's domain.
    fn now(&self, ctx: &Ctx<'_, '_, K, A::Out, In>) -> i64 {
        match self.opts.time {
            TimeDomain::EventTime => ctx.current_watermark(),
            TimeDomain::ProcessingTime => ctx.current_processing_time(),
        }
    }

    fn lateness(&self) -> i64 {
        match self.opts.time {
            TimeDomain::EventTime => self.opts.allowed_lateness_ms,
            TimeDomain::ProcessingTime => 0,
        }
    }

    fn emit(
        &self,
        ctx: &mut Ctx<'_, '_, K, A::Out, In>,
        w: Option<TimeWindow>,
        acc: &A::Acc,
    ) -> FnResult {
        let out = self.agg.result(ctx.key(), w, acc)?;
        let ts = w.map(|w| w.max_timestamp()).or(ctx.timestamp());
        ctx.out
            .collect_with_timestamp(WindowOutput::Result(out), ts);
        Ok(())
    }

    /// After a record was added to window `w` (not late): fires it again if
    /// the watermark passed it already (a late firing, with `late_acc`, the
    /// updated accumulator) and registers its timers unless it has them.
    /// `had_state`: the window already had an accumulator before this record,
    /// so its timers are registered already (see [`timers_needed`]).
    fn added(
        &self,
        ctx: &mut Ctx<'_, '_, K, A::Out, In>,
        w: TimeWindow,
        late_acc: Option<&A::Acc>,
        had_state: bool,
    ) -> FnResult {
        let fired = late_acc.is_some();
        if let Some(acc) = late_acc {
            // Late but within the allowed lateness: the window already fired,
            // so fire again with the updated result (Flink's late firing).
            self.emit(ctx, Some(w), acc)?;
        }
        if timers_needed(had_state, fired) {
            if !fired {
                self.register(ctx, w.max_timestamp());
            }
            let lateness = self.lateness();
            if lateness > 0 {
                self.register(ctx, cleanup_time(&w, lateness));
            }
        }
        Ok(())
    }

    /// Whether window `w` has fired already (its firing time has passed).
    fn has_fired(&self, ctx: &Ctx<'_, '_, K, A::Out, In>, w: &TimeWindow) -> bool {
        self.opts.time == TimeDomain::EventTime && w.max_timestamp() <= self.now(ctx)
    }

    /// Tumbling and sliding windows: the window that fires at timer `ts` and
    /// the one whose state is dropped at `ts` (each may not exist), computed
    /// instead of scanning every window of the key. Every window in state has
    /// its timers (see [`timers_needed`]; only session merges delete timers),
    /// so a timer only ever concerns these two windows. `None` (scan) for
    /// sessions and for windows at the ends of the i64 range, whose bounds
    /// the assigner saturated.
    fn windows_of_timer(
        &self,
        ts: i64,
        lateness: i64,
    ) -> Option<(Option<TimeWindow>, Option<TimeWindow>)> {
        let (size, slide) = match self.opts.assigner {
            WindowAssigner::Tumbling { size_ms } => (size_ms, size_ms),
            WindowAssigner::Sliding { size_ms, slide_ms } => (size_ms, slide_ms),
            _ => return None,
        };
        let ending_at = |max_ts: i64| -> Option<Option<TimeWindow>> {
            let end = max_ts.checked_add(1)?;
            let start = end.checked_sub(size)?;
            end.checked_add(size)?;
            start.checked_sub(slide)?;
            Some((start.rem_euclid(slide) == 0).then(|| TimeWindow::new(start, end)))
        };
        Some((ending_at(ts)?, ending_at(ts.checked_sub(lateness)?)?))
    }

    fn process_count(
        &mut self,
        value: In,
        ctx: &mut Ctx<'_, '_, K, A::Out, In>,
        size: u64,
    ) -> FnResult {
        let state = self.counts.as_ref().ok_or_else(not_initialized)?;
        let (n, mut acc) = state.value(ctx)?.unwrap_or_else(|| (0, self.agg.create()));
        let ts = ctx
            .timestamp()
            .unwrap_or_else(|| ctx.current_processing_time());
        self.agg.add(&mut acc, &value, ts)?;
        if n + 1 >= size {
            self.emit(ctx, None, &acc)?;
            state.clear(ctx)
        } else {
            state.update(ctx, (n + 1, acc))
        }
    }
}

impl<K, In, A> KeyedProcessFunction<K, In, WindowOutput<A::Out, In>> for WindowOperator<K, In, A>
where
    K: Key,
    In: crate::functions::Data,
    A: WindowAggregator<K, In>,
{
    fn initialize_state(&mut self, ctx: &mut InitContext<'_, K>) -> FnResult {
        if let Some(layout) = self.agg.state_layout() {
            let st = ctx.list_state(&OperatorListStateDescriptor::union(LAYOUT_STATE))?;
            // Union state: every subtask sees what all the old ones wrote.
            let name = ctx.operator_name().to_string();
            if let Some(old) = st.get(ctx.operator_state())?.iter().find(|l| **l != layout) {
                return Err(UserError::msg(format!(
                    "window '{name}': the restored window state was written for the aggregates \
                     [{old}], and this job defines [{layout}]; accumulators cannot be carried \
                     over to other aggregates. Keep the aggregates, or start this step without \
                     its state (give it a new name and allow non-restored state)",
                )));
            }
            self.layout = Some((st, layout));
        }
        if let Some(kind) = self.opts.input_kind.clone() {
            let st: OperatorListState<String> =
                ctx.list_state(&OperatorListStateDescriptor::union(INPUT_STATE))?;
            let name = ctx.operator_name().to_string();
            if ctx.restores_in_flight_records()
                && let Some(old) = st
                    .get(ctx.operator_state())?
                    .iter()
                    .find(|old| !in_flight_compatible(Some(old.as_str()), &kind))
            {
                let show = |k: &str| k.split('|').next().unwrap_or(k).to_string();
                return Err(UserError::msg(format!(
                    "window '{name}': the checkpoint holds records in flight to this window \
                     that were sent as {}, and this job sends it {}; they cannot be read as \
                     such. Restore from a savepoint (it holds no records in flight), or from \
                     a checkpoint of the job as it is",
                    show(old),
                    show(&kind)
                )));
            }
            self.input = Some((st, kind));
        }
        if let WindowAssigner::Count { .. } = self.opts.assigner {
            let mut d = ValueStateDescriptor::new("count-window");
            if let Some(t) = self.opts.state_ttl {
                d = d.with_ttl(t);
            }
            self.counts = Some(ctx.value_state(&d)?);
        } else {
            let mut d = MapStateDescriptor::new("windows");
            if let Some(t) = self.opts.state_ttl {
                d = d.with_ttl(t);
            }
            self.windows = Some(ctx.map_state(&d)?);
        }
        Ok(())
    }

    fn process_element(&mut self, value: In, ctx: &mut Ctx<'_, '_, K, A::Out, In>) -> FnResult {
        if let WindowAssigner::Count { size } = self.opts.assigner {
            return self.process_count(value, ctx, size);
        }
        let ts = match self.opts.time {
            TimeDomain::ProcessingTime => ctx.current_processing_time(),
            TimeDomain::EventTime => ctx.timestamp().ok_or_else(|| {
                UserError::msg(
                    "a record without an event timestamp reached an event-time window \
                     (assign timestamps with a watermark strategy at the source)",
                )
            })?,
        };
        let lateness = self.lateness();
        let watermark = ctx.current_watermark();
        let event = self.opts.time == TimeDomain::EventTime;
        let state = self.windows.clone().ok_or_else(not_initialized)?;
        if self.opts.assigner.is_session() {
            let new = self.opts.assigner.assign(ts)[0];
            let mut existing: Vec<TimeWindow> =
                state.entries(ctx)?.into_iter().map(|(w, _)| w).collect();
            existing.sort();
            let (merged, absorbed) = merge_session(&existing, new);
            if event && is_late(&merged, lateness, watermark) {
                ctx.out.collect(WindowOutput::Late(value));
                return Ok(());
            }
            let mut acc = self.agg.create();
            for w in &absorbed {
                if let Some(a) = state.get(ctx, w)? {
                    self.agg.merge(&mut acc, a);
                }
                state.remove(ctx, w)?;
                self.delete(ctx, w.max_timestamp());
                if lateness > 0 {
                    self.delete(ctx, cleanup_time(w, lateness));
                }
            }
            self.agg.add(&mut acc, &value, ts)?;
            let late = self.has_fired(ctx, &merged).then(|| acc.clone());
            state.put(ctx, merged, acc)?;
            return self.added(ctx, merged, late.as_ref(), false);
        }
        let mut accepted = false;
        for w in self.opts.assigner.windows(ts) {
            if event && is_late(&w, lateness, watermark) {
                continue;
            }
            accepted = true;
            let fired = self.has_fired(ctx, &w);
            // One lookup, the accumulator updated in place.
            let (had_state, added, late) = state.update_with(
                ctx,
                w,
                || self.agg.create(),
                |acc, had_state| {
                    let added = self.agg.add(acc, &value, ts);
                    (had_state, added, fired.then(|| acc.clone()))
                },
            )?;
            added?;
            self.added(ctx, w, late.as_ref(), had_state)?;
        }
        if !accepted {
            ctx.out.collect(WindowOutput::Late(value));
        }
        Ok(())
    }

    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> FnResult {
        if let Some((st, layout)) = &self.layout {
            st.update(ctx.operator_state(), vec![layout.clone()])?;
        }
        if let Some((st, kind)) = &self.input {
            st.update(ctx.operator_state(), vec![kind.clone()])?;
        }
        Ok(())
    }

    fn on_timer(&mut self, timestamp: i64, ctx: &mut Ctx<'_, '_, K, A::Out, In>) -> FnResult {
        let Some(state) = self.windows.clone() else {
            return Ok(());
        };
        let lateness = self.lateness();
        if let Some((fires, dropped)) = self.windows_of_timer(timestamp, lateness) {
            if let Some(w) = fires
                && let Some(acc) = state.get(ctx, &w)?
            {
                self.emit(ctx, Some(w), &acc)?;
            }
            if let Some(w) = dropped {
                state.remove(ctx, &w)?;
            }
            return Ok(());
        }
        let mut windows = state.entries(ctx)?;
        windows.sort_by_key(|(w, _)| *w);
        for (w, acc) in windows {
            if w.max_timestamp() == timestamp {
                self.emit(ctx, Some(w), &acc)?;
            }
            if cleanup_time(&w, lateness) <= timestamp {
                state.remove(ctx, &w)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::timers_needed;

    /// Keys alone can read records restored in flight (records are maps, and
    /// their key is computed), not the other way round; a checkpoint that
    /// predates kinds is read as before.
    #[test]
    fn in_flight_records_are_read_only_as_what_they_were_sent_as() {
        use super::in_flight_compatible as ok;
        let keys = "keys|records";
        let records = "records";
        assert!(ok(Some(keys), keys));
        assert!(ok(Some(records), records));
        assert!(
            ok(Some(records), keys),
            "records in flight into a keys-only window"
        );
        assert!(
            !ok(Some(keys), records),
            "keys in flight into a records window"
        );
        assert!(
            ok(None, records) && ok(None, keys),
            "written before kinds were kept"
        );
    }

    #[test]
    fn timers_are_registered_for_new_windows_and_late_firings_only() {
        // (had_state, fired) -> register
        assert!(timers_needed(false, false), "first record of a window");
        assert!(
            timers_needed(false, true),
            "first record after a late firing"
        );
        assert!(timers_needed(true, true), "late firing re-arms cleanup");
        assert!(!timers_needed(true, false), "timers already registered");
    }
}
