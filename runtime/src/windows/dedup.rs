//! De-duplication by key within a TTL: the first record of each key passes,
//! later ones are dropped until the key's state expires (processing time).

use crate::error::{FnResult, UserError};
use crate::functions::{CheckpointListener, Data, InitContext, KeyedContext, KeyedProcessFunction};
use crate::state::keyed::{Key, ValueState, ValueStateDescriptor};
use crate::state::ttl::{TtlConfig, UpdateType, Visibility};

/// Emits the first record per key; the key is forgotten `ttl` after it was
/// first seen (`OnCreateAndWrite`: a duplicate does not extend it).
#[derive(Clone)]
pub struct Dedup {
    ttl: TtlConfig,
    seen: Option<ValueState<bool>>,
}

impl Dedup {
    pub fn new(ttl: std::time::Duration) -> Self {
        Dedup {
            ttl: TtlConfig::new(ttl)
                .update_type(UpdateType::OnCreateAndWrite)
                .visibility(Visibility::NeverReturnExpired)
                .cleanup_full_snapshot(),
            seen: None,
        }
    }
}

impl CheckpointListener for Dedup {}

impl<K: Key, T: Data> KeyedProcessFunction<K, T, T> for Dedup {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_, K>) -> FnResult {
        self.seen = Some(ctx.value_state(&ValueStateDescriptor::new("seen").with_ttl(self.ttl))?);
        Ok(())
    }

    fn process_element(&mut self, value: T, ctx: &mut KeyedContext<'_, K, T>) -> FnResult {
        let seen = self
            .seen
            .as_ref()
            .ok_or_else(|| UserError::msg("dedup state is not initialized"))?;
        if seen.value(ctx)?.is_none() {
            seen.update(ctx, true)?;
            ctx.collect(value);
        }
        Ok(())
    }
}
