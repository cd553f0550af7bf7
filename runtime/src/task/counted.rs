//! Counts the records that pass a point of a chain, for the records-in/out
//! metrics. The count is kept in a plain integer and published to the shared
//! counter in batches (and on every flush, barrier and end), so the record path
//! pays no atomic operation per record.

use prometheus_client::metrics::counter::Counter;

use super::chain::{Downstream, Notification, OperatorSnapshot, Out};
use crate::error::TaskError;
use crate::event::{Barrier, StreamRecord};

const PUBLISH_EVERY: u64 = 4096;

pub(crate) struct Counted<T> {
    pub inner: Out<T>,
    pub counter: Counter,
    pub local: u64,
}

impl<T> Counted<T> {
    pub fn new(inner: Out<T>, counter: Counter) -> Self {
        Counted {
            inner,
            counter,
            local: 0,
        }
    }

    fn publish(&mut self) {
        if self.local > 0 {
            self.counter.inc_by(self.local);
            self.local = 0;
        }
    }
}

impl<T: Send + 'static> Downstream<T> for Counted<T> {
    #[inline]
    fn record(&mut self, r: StreamRecord<T>) -> Result<(), TaskError> {
        self.local += 1;
        if self.local >= PUBLISH_EVERY {
            self.publish();
        }
        self.inner.record(r)
    }
    fn watermark(&mut self, wm: i64) -> Result<(), TaskError> {
        self.inner.watermark(wm)
    }
    fn idle(&mut self, idle: bool) -> Result<(), TaskError> {
        self.inner.idle(idle)
    }
    fn barrier(&mut self, b: &Barrier, snaps: &mut Vec<OperatorSnapshot>) -> Result<(), TaskError> {
        self.publish();
        self.inner.barrier(b, snaps)
    }
    fn notify(&mut self, n: Notification) -> Result<(), TaskError> {
        self.inner.notify(n)
    }
    fn end(&mut self, drain: bool) -> Result<(), TaskError> {
        self.publish();
        self.inner.end(drain)
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        self.publish();
        self.inner.flush()
    }
    fn processing_time(&mut self, now: i64) -> Result<(), TaskError> {
        self.inner.processing_time(now)
    }
    fn next_processing_time(&self) -> Option<i64> {
        self.inner.next_processing_time()
    }
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        self.publish();
    }
}
