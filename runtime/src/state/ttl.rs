//! State time-to-live, following Flink's StateTtlConfig. TTL is measured in
//! processing time from each entry's last access timestamp.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checkpoint::format::TtlMeta;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateType {
    /// The timestamp is refreshed when the entry is created or written.
    OnCreateAndWrite,
    /// ... and also when it is read.
    OnReadAndWrite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Visibility {
    NeverReturnExpired,
    /// An expired value is returned by the read that cleans it up.
    ReturnExpiredIfNotCleanedUp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtlConfig {
    pub ttl_ms: u64,
    pub update_type: UpdateType,
    pub visibility: Visibility,
    /// Leave expired entries out of full snapshots (checkpoints and savepoints).
    /// Expired entries are always removed when read.
    pub cleanup_full_snapshot: bool,
}

impl TtlConfig {
    pub fn new(ttl: Duration) -> Self {
        TtlConfig {
            ttl_ms: ttl.as_millis() as u64,
            update_type: UpdateType::OnCreateAndWrite,
            visibility: Visibility::NeverReturnExpired,
            cleanup_full_snapshot: false,
        }
    }
    pub fn update_type(mut self, u: UpdateType) -> Self {
        self.update_type = u;
        self
    }
    pub fn visibility(mut self, v: Visibility) -> Self {
        self.visibility = v;
        self
    }
    pub fn cleanup_full_snapshot(mut self) -> Self {
        self.cleanup_full_snapshot = true;
        self
    }

    /// Expired once `last_access + ttl <= now`, as in Flink.
    pub fn is_expired(&self, last_access: i64, now: i64) -> bool {
        last_access.saturating_add(self.ttl_ms.min(i64::MAX as u64) as i64) <= now
    }

    pub fn refresh_on_read(&self) -> bool {
        self.update_type == UpdateType::OnReadAndWrite
    }

    pub fn return_expired(&self) -> bool {
        self.visibility == Visibility::ReturnExpiredIfNotCleanedUp
    }

    pub(crate) fn meta(&self) -> TtlMeta {
        TtlMeta {
            ttl_ms: self.ttl_ms,
            update_type: match self.update_type {
                UpdateType::OnCreateAndWrite => "on-create-and-write",
                UpdateType::OnReadAndWrite => "on-read-and-write",
            }
            .into(),
            visibility: match self.visibility {
                Visibility::NeverReturnExpired => "never-return-expired",
                Visibility::ReturnExpiredIfNotCleanedUp => "return-expired-if-not-cleaned-up",
            }
            .into(),
        }
    }
}

/// What a read should do with an entry, given its TTL. Pure so that every
/// combination is unit-tested.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// Return it; refresh the timestamp if `refresh`.
    Live { refresh: bool },
    /// Remove it; return the stale value if `return_it`.
    Expired { return_it: bool },
}

pub(crate) fn on_read(ttl: Option<&TtlConfig>, last_access: i64, now: i64) -> ReadOutcome {
    match ttl {
        None => ReadOutcome::Live { refresh: false },
        Some(t) if t.is_expired(last_access, now) => ReadOutcome::Expired {
            return_it: t.return_expired(),
        },
        Some(t) => ReadOutcome::Live {
            refresh: t.refresh_on_read(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_outcome_for_every_configuration() {
        for update in [UpdateType::OnCreateAndWrite, UpdateType::OnReadAndWrite] {
            for vis in [
                Visibility::NeverReturnExpired,
                Visibility::ReturnExpiredIfNotCleanedUp,
            ] {
                let t = TtlConfig::new(Duration::from_millis(100))
                    .update_type(update)
                    .visibility(vis);
                // Live just before expiry.
                assert_eq!(
                    on_read(Some(&t), 1000, 1099),
                    ReadOutcome::Live {
                        refresh: update == UpdateType::OnReadAndWrite
                    }
                );
                // Expired exactly at last_access + ttl.
                assert_eq!(
                    on_read(Some(&t), 1000, 1100),
                    ReadOutcome::Expired {
                        return_it: vis == Visibility::ReturnExpiredIfNotCleanedUp
                    }
                );
            }
        }
        assert_eq!(
            on_read(None, 0, i64::MAX),
            ReadOutcome::Live { refresh: false }
        );
    }

    #[test]
    fn huge_ttl_never_overflows() {
        let t = TtlConfig::new(Duration::from_secs(u64::MAX / 4));
        assert!(!t.is_expired(i64::MAX - 5, i64::MAX - 1));
    }
}
