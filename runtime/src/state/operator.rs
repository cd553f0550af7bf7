//! Operator (non-keyed) list state. Each subtask holds lists of independent items;
//! on restore the concatenated lists are redistributed by even split or union.

use std::any::Any;
use std::collections::HashMap;
use std::marker::PhantomData;

use serde_bytes::ByteBuf;

use super::keyed::StateValue;
use crate::checkpoint::format::{OperatorListData, Redistribution};
use crate::error::{SnapshotError, UserError};

/// Describes an operator list state and how it is redistributed when parallelism
/// changes.
#[derive(Clone, Debug)]
pub struct OperatorListStateDescriptor<T> {
    pub name: String,
    pub mode: Redistribution,
    _p: PhantomData<fn() -> T>,
}

impl<T> OperatorListStateDescriptor<T> {
    pub fn even_split(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            mode: Redistribution::EvenSplit,
            _p: PhantomData,
        }
    }
    pub fn union(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            mode: Redistribution::Union,
            _p: PhantomData,
        }
    }
}

trait ErasedList: Send {
    fn as_any(&mut self) -> &mut dyn Any;
    fn snapshot(&self) -> Result<OperatorListData, SnapshotError>;
}

struct TypedList<T> {
    name: String,
    mode: Redistribution,
    items: Vec<T>,
}

impl<T: StateValue> ErasedList for TypedList<T> {
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
    fn snapshot(&self) -> Result<OperatorListData, SnapshotError> {
        let mut items = Vec::with_capacity(self.items.len());
        for it in &self.items {
            items.push(ByteBuf::from(
                postcard::to_allocvec(it).map_err(|e| SnapshotError::Encode(e.to_string()))?,
            ));
        }
        Ok(OperatorListData {
            name: self.name.clone(),
            mode: self.mode,
            items,
        })
    }
}

/// The operator state of one operator subtask.
pub struct OperatorStateStore {
    operator: String,
    lists: Vec<Box<dyn ErasedList>>,
    by_name: HashMap<String, usize>,
    restored: HashMap<String, OperatorListData>,
}

impl OperatorStateStore {
    pub(crate) fn new(operator: &str, restored: Vec<OperatorListData>) -> Self {
        OperatorStateStore {
            operator: operator.to_string(),
            lists: Vec::new(),
            by_name: HashMap::new(),
            restored: restored.into_iter().map(|d| (d.name.clone(), d)).collect(),
        }
    }

    /// Registers a list state; returns a handle whose contents are the restored
    /// items for this subtask (empty on a fresh start).
    pub fn list_state<T: StateValue>(
        &mut self,
        d: &OperatorListStateDescriptor<T>,
    ) -> Result<OperatorListState<T>, UserError> {
        if let Some(&id) = self.by_name.get(&d.name) {
            return Ok(OperatorListState {
                id,
                _p: PhantomData,
            });
        }
        let mut items: Vec<T> = Vec::new();
        if let Some(r) = self.restored.remove(&d.name) {
            for (i, b) in r.items.iter().enumerate() {
                items.push(postcard::from_bytes(b).map_err(|e| {
                    UserError::msg(format!(
                        "operator '{}': list state '{}': cannot decode restored item {i}: {e} \
                         (did the state type change?)",
                        self.operator, d.name
                    ))
                })?);
            }
        }
        let id = self.lists.len();
        self.lists.push(Box::new(TypedList {
            name: d.name.clone(),
            mode: d.mode,
            items,
        }));
        self.by_name.insert(d.name.clone(), id);
        Ok(OperatorListState {
            id,
            _p: PhantomData,
        })
    }

    fn typed<T: StateValue>(&mut self, id: usize) -> Result<&mut TypedList<T>, UserError> {
        let op = self.operator.clone();
        self.lists
            .get_mut(id)
            .and_then(|l| l.as_any().downcast_mut::<TypedList<T>>())
            .ok_or_else(|| {
                UserError::msg(format!(
                    "operator '{op}': list state handle {id} does not belong to this operator"
                ))
            })
    }

    pub(crate) fn snapshot(&self) -> Result<Vec<OperatorListData>, SnapshotError> {
        let mut out = Vec::new();
        for l in &self.lists {
            out.push(l.snapshot()?);
        }
        // Restored lists nobody registered are carried forward, never dropped.
        out.extend(self.restored.values().cloned());
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// Handle to an operator list state.
#[derive(Debug)]
pub struct OperatorListState<T> {
    id: usize,
    _p: PhantomData<fn() -> T>,
}

impl<T> Clone for OperatorListState<T> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            _p: PhantomData,
        }
    }
}

impl<T: StateValue> OperatorListState<T> {
    pub fn get<'s>(&self, store: &'s mut OperatorStateStore) -> Result<&'s [T], UserError> {
        Ok(&store.typed::<T>(self.id)?.items)
    }
    pub fn add(&self, store: &mut OperatorStateStore, v: T) -> Result<(), UserError> {
        store.typed::<T>(self.id)?.items.push(v);
        Ok(())
    }
    pub fn update(&self, store: &mut OperatorStateStore, vs: Vec<T>) -> Result<(), UserError> {
        store.typed::<T>(self.id)?.items = vs;
        Ok(())
    }
    pub fn clear(&self, store: &mut OperatorStateStore) -> Result<(), UserError> {
        store.typed::<T>(self.id)?.items.clear();
        Ok(())
    }
}
