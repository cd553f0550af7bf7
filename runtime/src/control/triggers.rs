//! Savepoint requests in flight and their results, keyed by trigger id.

use std::collections::HashMap;
use std::sync::Mutex;

use crossbeam_channel::TryRecvError;
use runnel_api::{SavepointStatus, TriggerState};

use crate::executor::SavepointReceiver;

struct Entry {
    stop: bool,
    rx: Option<SavepointReceiver>,
    status: SavepointStatus,
    /// A finished result that no client has fetched yet.
    unread: bool,
}

#[derive(Default)]
pub struct Triggers {
    inner: Mutex<HashMap<String, Entry>>,
}

impl Triggers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub fn add(&self, rx: SavepointReceiver, stop: bool) -> String {
        let id = format!("{:032x}", rand::random::<u128>());
        let status = SavepointStatus {
            trigger_id: id.clone(),
            state: TriggerState::InProgress,
            stop,
            checkpoint_id: None,
            path: None,
            error: None,
        };
        self.lock().insert(
            id.clone(),
            Entry {
                stop,
                rx: Some(rx),
                status,
                unread: false,
            },
        );
        id
    }

    fn refresh(e: &mut Entry) {
        let Some(rx) = &e.rx else { return };
        let outcome = match rx.try_recv() {
            Ok(r) => r.map_err(|err| err.to_string()),
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => {
                Err("the job ended before the savepoint completed".to_string())
            }
        };
        match outcome {
            Ok(info) => {
                e.status.state = TriggerState::Completed;
                e.status.checkpoint_id = Some(info.checkpoint_id);
                e.status.path = Some(info.path);
            }
            Err(msg) => {
                e.status.state = TriggerState::Failed;
                e.status.error = Some(msg);
            }
        }
        e.rx = None;
        e.unread = true;
    }

    /// The current status of a trigger; marks a finished result as read.
    pub fn poll(&self, id: &str) -> Option<SavepointStatus> {
        let mut g = self.lock();
        let e = g.get_mut(id)?;
        Self::refresh(e);
        if e.status.state != TriggerState::InProgress {
            e.unread = false;
        }
        Some(e.status.clone())
    }

    pub fn stop_in_progress(&self) -> bool {
        let mut g = self.lock();
        g.values_mut().any(|e| {
            Self::refresh(e);
            e.stop && e.status.state != TriggerState::Failed
        })
    }

    pub fn has_unread_results(&self) -> bool {
        let mut g = self.lock();
        g.values_mut().any(|e| {
            Self::refresh(e);
            e.unread
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SavepointInfo;
    use crate::error::JobError;
    use crossbeam_channel::bounded;

    #[test]
    fn lifecycle_in_progress_completed_read() {
        let t = Triggers::default();
        let (tx, rx) = bounded(1);
        let id = t.add(rx, false);
        assert_eq!(t.poll(&id).unwrap().state, TriggerState::InProgress);
        assert!(!t.has_unread_results());
        tx.send(Ok(SavepointInfo {
            checkpoint_id: 7,
            path: "file:///sp/savepoint-7".into(),
        }))
        .unwrap();
        assert!(t.has_unread_results());
        let s = t.poll(&id).unwrap();
        assert_eq!(s.state, TriggerState::Completed);
        assert_eq!(s.checkpoint_id, Some(7));
        assert_eq!(s.path.as_deref(), Some("file:///sp/savepoint-7"));
        assert!(!t.has_unread_results());
        assert!(t.poll("nope").is_none());
    }

    #[test]
    fn failures_and_vanished_jobs_are_reported() {
        let t = Triggers::default();
        let (tx, rx) = bounded(1);
        let id = t.add(rx, true);
        assert!(t.stop_in_progress());
        tx.send(Err(JobError::Rejected("boom".into()))).unwrap();
        let s = t.poll(&id).unwrap();
        assert_eq!(s.state, TriggerState::Failed);
        assert!(s.error.unwrap().contains("boom"));
        assert!(
            !t.stop_in_progress(),
            "a failed stop no longer blocks requests"
        );
        let (tx2, rx2) = bounded::<Result<SavepointInfo, JobError>>(1);
        let id2 = t.add(rx2, false);
        drop(tx2);
        assert_eq!(t.poll(&id2).unwrap().state, TriggerState::Failed);
    }
}
