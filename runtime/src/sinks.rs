//! Built-in sinks for demos and tests.

use std::fmt::Display;
use std::sync::{Arc, Mutex};

use crate::error::FnResult;
use crate::functions::{CheckpointListener, SinkContext, SinkFunction};

/// Appends every record to a shared vector. Not transactional: after a restore
/// it sees replayed records again (use it to observe at-least-once behaviour).
pub struct CollectSink<T> {
    pub items: Arc<Mutex<Vec<T>>>,
}

impl<T> Clone for CollectSink<T> {
    fn clone(&self) -> Self {
        CollectSink {
            items: self.items.clone(),
        }
    }
}

impl<T> CollectSink<T> {
    pub fn new() -> (Self, Arc<Mutex<Vec<T>>>) {
        let items = Arc::new(Mutex::new(Vec::new()));
        (
            CollectSink {
                items: items.clone(),
            },
            items,
        )
    }
}

impl<T> CheckpointListener for CollectSink<T> {}

impl<T: Send + 'static> SinkFunction<T> for CollectSink<T> {
    fn invoke(&mut self, value: T, _ctx: &SinkContext) -> FnResult {
        match self.items.lock() {
            Ok(mut g) => g.push(value),
            Err(p) => p.into_inner().push(value),
        }
        Ok(())
    }
}

/// Prints each record on its own line to stdout.
#[derive(Clone, Default)]
pub struct PrintSink;

impl CheckpointListener for PrintSink {}

impl<T: Display + Send + 'static> SinkFunction<T> for PrintSink {
    fn invoke(&mut self, value: T, _ctx: &SinkContext) -> FnResult {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{value}")?;
        Ok(())
    }
}

/// Drops everything (benchmarks).
#[derive(Clone, Default)]
pub struct DiscardSink;

impl CheckpointListener for DiscardSink {}

impl<T: Send + 'static> SinkFunction<T> for DiscardSink {
    fn invoke(&mut self, _value: T, _ctx: &SinkContext) -> FnResult {
        Ok(())
    }
}
