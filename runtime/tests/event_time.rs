//! Event time end to end: bounded-out-of-orderness watermarks at the sources,
//! min-of-inputs propagation, and an idle source that must not stall timers.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use runnel_runtime::{
    CheckpointListener, FnResult, JobConfig, JobOutcome, KeyedContext, KeyedProcessFunction,
    SourceFunction, SourceOutput, SourcePoll, StreamEnv, UserError, WatermarkStrategy,
};

/// Emits (key, event time) pairs from a shared script; `Idle` when empty.
#[derive(Clone)]
struct Scripted {
    items: Arc<Mutex<Vec<(u64, i64)>>>,
}
impl CheckpointListener for Scripted {}
impl SourceFunction<(u64, i64)> for Scripted {
    fn poll(&mut self, out: &mut SourceOutput<'_, (u64, i64)>) -> Result<SourcePoll, UserError> {
        let mut items = lock(&self.items);
        if items.is_empty() {
            return Ok(SourcePoll::Idle(Duration::from_millis(2)));
        }
        for it in items.drain(..) {
            out.collect(it);
        }
        Ok(SourcePoll::MoreAvailable)
    }
}

/// Registers an event-time timer at `ts + 10` per record; reports firings.
#[derive(Clone)]
struct TimerFn {
    fired: Arc<Mutex<Vec<(u64, i64, i64)>>>,
}
impl CheckpointListener for TimerFn {}
impl KeyedProcessFunction<u64, (u64, i64), ()> for TimerFn {
    fn process_element(&mut self, v: (u64, i64), ctx: &mut KeyedContext<'_, u64, ()>) -> FnResult {
        ctx.register_event_time_timer(v.1 + 10);
        Ok(())
    }
    fn on_timer(&mut self, ts: i64, ctx: &mut KeyedContext<'_, u64, ()>) -> FnResult {
        lock(&self.fired).push((*ctx.key(), ts, ctx.current_watermark()));
        Ok(())
    }
}

#[test]
fn watermarks_take_the_minimum_and_an_idle_source_does_not_stall_them() {
    let a = Arc::new(Mutex::new(Vec::new()));
    let b = Arc::new(Mutex::new(Vec::new()));
    let fired = Arc::new(Mutex::new(Vec::new()));
    let mut cfg = JobConfig::new("event-time");
    cfg.watermark_interval_ms = 0;
    let env = StreamEnv::new(cfg);
    let strategy = |idle_ms: u64| {
        WatermarkStrategy::<(u64, i64)>::bounded_out_of_orderness(Duration::from_millis(5))
            .with_timestamp_assigner(|v, _| v.1)
            .with_idleness(Duration::from_millis(idle_ms))
    };
    let sa =
        env.add_source_with_watermarks("a", Scripted { items: a.clone() }, Some(strategy(60_000)));
    let sb =
        env.add_source_with_watermarks("b", Scripted { items: b.clone() }, Some(strategy(200)));
    sa.union(sb)
        .key_by(|v: &(u64, i64)| v.0)
        .process(
            "timers",
            TimerFn {
                fired: fired.clone(),
            },
        )
        .sink("discard", runnel_runtime::sinks::DiscardSink);
    let client = env.execute_async().unwrap();
    let wait_for = |n: usize| {
        let t0 = std::time::Instant::now();
        while lock(&fired).len() < n {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "timers did not fire: {:?}",
                lock(&fired)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // Both sources active: the watermark is the minimum of the two.
    lock(&b).push((2, 100));
    lock(&a).push((1, 1_000));
    // b's watermark is 100-5-1 = 94 < 110: key 2's timer (110) must wait...
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        lock(&fired).is_empty(),
        "the slower input holds the watermark back"
    );
    lock(&b).push((2, 200));
    // ...until b's watermark passes 110 (200-6 = 194); key 1's timer (1010) still waits.
    wait_for(1);
    assert_eq!(lock(&fired)[0].0, 2);
    assert_eq!(lock(&fired)[0].1, 110);
    // b goes silent: after its idleness timeout it no longer holds the watermark,
    // so a's watermark (994) alone drives time, yet 1010 is past it...
    lock(&a).push((1, 2_000));
    // While b is active its watermark (194) holds everything at or below it.
    // Once b is idle (200 ms without records), a's watermark 1994 alone drives
    // time and fires both pending timers, in timestamp order.
    wait_for(3);
    let f = lock(&fired).clone();
    assert_eq!((f[1].0, f[1].1), (2, 210));
    assert_eq!((f[2].0, f[2].1), (1, 1_010));
    assert!(
        f[2].2 >= 1_994 && f[2].2 < i64::MAX,
        "fired by a running watermark ({}), not by end of input",
        f[2].2
    );
    client.cancel().unwrap();
    assert_eq!(client.wait().unwrap(), JobOutcome::Cancelled);
}
