//! Managed state: keyed state (scoped to the current key, partitioned by key
//! group) and operator list state (per subtask, redistributed on rescale).

mod cow_map;
pub mod keyed;
pub mod operator;
pub mod ttl;

pub use crate::checkpoint::format::Redistribution;
pub use keyed::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, Key, KeyedBackend,
    KeyedStateAccess, ListState, ListStateDescriptor, MapState, MapStateDescriptor, ReducingState,
    ReducingStateDescriptor, StateValue, ValueState, ValueStateDescriptor,
};
pub use operator::{OperatorListState, OperatorListStateDescriptor, OperatorStateStore};
pub use ttl::{TtlConfig, UpdateType, Visibility};
