//! Heap keyed state backend. One table per registered state descriptor, each a hash
//! map from key to a typed entry. Snapshots group entries by key group so that a
//! restore at another parallelism takes whole key groups.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use super::ttl::{ReadOutcome, TtlConfig, on_read};
use crate::checkpoint::format::{KeyGroupData, KeyedStateMeta, TableData};
use crate::clock::Clock;
use crate::error::{SnapshotError, UserError};
use crate::keygroup::{KeyGroupRange, key_group_for_bytes};

/// A key of a keyed stream. Its postcard encoding is what the key-group hash sees.
pub trait Key: Clone + Eq + Hash + Serialize + DeserializeOwned + Send + 'static {}
impl<T: Clone + Eq + Hash + Serialize + DeserializeOwned + Send + 'static> Key for T {}

/// A value kept in state.
pub trait StateValue: Clone + Serialize + DeserializeOwned + Send + 'static {}
impl<T: Clone + Serialize + DeserializeOwned + Send + 'static> StateValue for T {}

pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// How an entry type is persisted. With TTL the last-access timestamps are written
/// too, which is why restoring with a different TTL setting is refused.
pub(crate) trait Stored: Send + Sized + 'static {
    /// Appends the encoding; returns false if nothing is left to write (all expired).
    fn encode(
        &self,
        ttl: Option<&TtlConfig>,
        now: i64,
        drop_expired: bool,
        out: &mut Vec<u8>,
    ) -> Result<bool, String>;
    fn decode(bytes: &[u8], ttl: bool) -> Result<Self, String>;
}

#[derive(Clone, Debug)]
pub(crate) struct Entry<V> {
    pub v: V,
    pub ts: i64,
}

fn enc<T: Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) -> Result<(), String> {
    let buf = std::mem::take(out);
    *out = postcard::to_extend(v, buf).map_err(|e| e.to_string())?;
    Ok(())
}

impl<V: StateValue> Stored for Entry<V> {
    fn encode(
        &self,
        ttl: Option<&TtlConfig>,
        now: i64,
        drop_expired: bool,
        out: &mut Vec<u8>,
    ) -> Result<bool, String> {
        match ttl {
            None => enc(&self.v, out).map(|_| true),
            Some(t) => {
                if drop_expired && t.is_expired(self.ts, now) {
                    return Ok(false);
                }
                enc(&(&self.v, self.ts), out).map(|_| true)
            }
        }
    }
    fn decode(bytes: &[u8], ttl: bool) -> Result<Self, String> {
        if ttl {
            let (v, ts): (V, i64) = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
            Ok(Entry { v, ts })
        } else {
            let v: V = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
            Ok(Entry { v, ts: 0 })
        }
    }
}

/// List state keeps one timestamp per element, as Flink's TTL list state does.
pub(crate) struct ListEntries<V>(pub Vec<Entry<V>>);

impl<V: StateValue> Stored for ListEntries<V> {
    fn encode(
        &self,
        ttl: Option<&TtlConfig>,
        now: i64,
        drop_expired: bool,
        out: &mut Vec<u8>,
    ) -> Result<bool, String> {
        match ttl {
            None => {
                let vs: Vec<&V> = self.0.iter().map(|e| &e.v).collect();
                enc(&vs, out).map(|_| !vs.is_empty())
            }
            Some(t) => {
                let vs: Vec<(&V, i64)> = self
                    .0
                    .iter()
                    .filter(|e| !(drop_expired && t.is_expired(e.ts, now)))
                    .map(|e| (&e.v, e.ts))
                    .collect();
                if vs.is_empty() {
                    return Ok(false);
                }
                enc(&vs, out).map(|_| true)
            }
        }
    }
    fn decode(bytes: &[u8], ttl: bool) -> Result<Self, String> {
        if ttl {
            let vs: Vec<(V, i64)> = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
            Ok(ListEntries(
                vs.into_iter().map(|(v, ts)| Entry { v, ts }).collect(),
            ))
        } else {
            let vs: Vec<V> = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
            Ok(ListEntries(
                vs.into_iter().map(|v| Entry { v, ts: 0 }).collect(),
            ))
        }
    }
}

/// Map state keeps one timestamp per map entry.
pub(crate) struct MapEntries<UK, UV>(pub FastMap<UK, Entry<UV>>);

impl<UK: Key, UV: StateValue> Stored for MapEntries<UK, UV> {
    fn encode(
        &self,
        ttl: Option<&TtlConfig>,
        now: i64,
        drop_expired: bool,
        out: &mut Vec<u8>,
    ) -> Result<bool, String> {
        match ttl {
            None => {
                let vs: Vec<(&UK, &UV)> = self.0.iter().map(|(k, e)| (k, &e.v)).collect();
                enc(&vs, out).map(|_| !vs.is_empty())
            }
            Some(t) => {
                let vs: Vec<(&UK, &UV, i64)> = self
                    .0
                    .iter()
                    .filter(|(_, e)| !(drop_expired && t.is_expired(e.ts, now)))
                    .map(|(k, e)| (k, &e.v, e.ts))
                    .collect();
                if vs.is_empty() {
                    return Ok(false);
                }
                enc(&vs, out).map(|_| true)
            }
        }
    }
    fn decode(bytes: &[u8], ttl: bool) -> Result<Self, String> {
        let mut m = FastMap::default();
        if ttl {
            let vs: Vec<(UK, UV, i64)> = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
            for (k, v, ts) in vs {
                m.insert(k, Entry { v, ts });
            }
        } else {
            let vs: Vec<(UK, UV)> = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
            for (k, v) in vs {
                m.insert(k, Entry { v, ts: 0 });
            }
        }
        Ok(MapEntries(m))
    }
}

pub(crate) struct Table<K, S> {
    pub map: FastMap<K, S>,
    pub ttl: Option<TtlConfig>,
}

trait ErasedTable<K>: Send {
    fn as_any(&mut self) -> &mut dyn Any;
    fn snapshot(
        &self,
        name: &str,
        now: i64,
        max_parallelism: u32,
        out: &mut BTreeMap<u32, KeyGroupData>,
    ) -> Result<u64, SnapshotError>;
    fn len(&self) -> usize;
}

impl<K: Key, S: Stored> ErasedTable<K> for Table<K, S> {
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
    fn snapshot(
        &self,
        name: &str,
        now: i64,
        max_parallelism: u32,
        out: &mut BTreeMap<u32, KeyGroupData>,
    ) -> Result<u64, SnapshotError> {
        let drop_expired = self.ttl.map(|t| t.cleanup_full_snapshot).unwrap_or(false);
        let mut n = 0u64;
        for (k, s) in &self.map {
            let mut vbuf = Vec::new();
            if !s
                .encode(self.ttl.as_ref(), now, drop_expired, &mut vbuf)
                .map_err(SnapshotError::Encode)?
            {
                continue;
            }
            let kbuf =
                postcard::to_allocvec(k).map_err(|e| SnapshotError::Encode(e.to_string()))?;
            let kg = key_group_for_bytes(&kbuf, max_parallelism);
            push_entry(out, kg, name, kbuf, vbuf);
            n += 1;
        }
        Ok(n)
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}

fn push_entry(out: &mut BTreeMap<u32, KeyGroupData>, kg: u32, name: &str, k: Vec<u8>, v: Vec<u8>) {
    let group = out.entry(kg).or_insert_with(|| KeyGroupData {
        key_group: kg,
        ..Default::default()
    });
    match group.tables.iter_mut().find(|t| t.name == name) {
        Some(t) => t.entries.push((ByteBuf::from(k), ByteBuf::from(v))),
        None => group.tables.push(TableData {
            name: name.to_string(),
            entries: vec![(ByteBuf::from(k), ByteBuf::from(v))],
        }),
    }
}

/// The keyed state of one operator subtask.
pub struct KeyedBackend<K> {
    operator: String,
    tables: Vec<Box<dyn ErasedTable<K>>>,
    metas: Vec<KeyedStateMeta>,
    by_name: HashMap<String, usize>,
    /// Restored entries of states not (yet) registered, by state name. They are
    /// carried into later snapshots unchanged, so no state is lost silently.
    restored: HashMap<String, Vec<(u32, ByteBuf, ByteBuf)>>,
    restored_meta: HashMap<String, KeyedStateMeta>,
    pub(crate) clock: Clock,
    max_parallelism: u32,
    range: KeyGroupRange,
    /// Set when a registration was refused because restored state does not fit.
    pub(crate) incompatible: Option<String>,
}

impl<K: Key> KeyedBackend<K> {
    pub(crate) fn new(
        operator: &str,
        clock: Clock,
        max_parallelism: u32,
        range: KeyGroupRange,
        restored_groups: Vec<KeyGroupData>,
        restored_meta: Vec<KeyedStateMeta>,
    ) -> Self {
        let mut restored: HashMap<String, Vec<(u32, ByteBuf, ByteBuf)>> = HashMap::new();
        for g in restored_groups {
            for t in g.tables {
                let list = restored.entry(t.name).or_default();
                for (k, v) in t.entries {
                    list.push((g.key_group, k, v));
                }
            }
        }
        KeyedBackend {
            operator: operator.to_string(),
            tables: Vec::new(),
            metas: Vec::new(),
            by_name: HashMap::new(),
            restored,
            restored_meta: restored_meta
                .into_iter()
                .map(|m| (m.name.clone(), m))
                .collect(),
            clock,
            max_parallelism,
            range,
            incompatible: None,
        }
    }

    pub fn key_groups(&self) -> KeyGroupRange {
        self.range
    }

    fn refuse(&mut self, msg: String) -> UserError {
        self.incompatible = Some(msg.clone());
        UserError::msg(msg)
    }

    /// Registers a state (idempotent per name) and restores its entries.
    pub(crate) fn register<S: Stored>(
        &mut self,
        name: &str,
        kind: &str,
        ttl: Option<TtlConfig>,
    ) -> Result<usize, UserError> {
        if let Some(&id) = self.by_name.get(name) {
            if self.metas[id].kind != kind {
                return Err(UserError::msg(format!(
                    "operator '{}': state '{name}' is already registered as {} state, not {kind}",
                    self.operator, self.metas[id].kind
                )));
            }
            return Ok(id);
        }
        let mut table: Table<K, S> = Table {
            map: FastMap::default(),
            ttl,
        };
        if let Some(old) = self.restored_meta.get(name) {
            if old.kind != kind {
                return Err(self.refuse(format!(
                    "operator '{}': state '{name}' was written as {} state and cannot be restored as {kind} state",
                    self.operator, old.kind
                )));
            }
            match (&old.ttl, &ttl) {
                (None, Some(_)) => {
                    return Err(self.refuse(format!(
                        "operator '{}': state '{name}' was written without TTL but the job now enables TTL for it; \
                         TTL changes the stored entry format, so this restore is refused \
                         (keep TTL disabled for this state, or give the state a new name)",
                        self.operator
                    )));
                }
                (Some(_), None) => {
                    return Err(self.refuse(format!(
                        "operator '{}': state '{name}' was written with TTL but the job now disables TTL for it; \
                         TTL changes the stored entry format, so this restore is refused \
                         (keep TTL enabled for this state, or give the state a new name)",
                        self.operator
                    )));
                }
                _ => {}
            }
            let with_ttl = old.ttl.is_some();
            for (kg, kbytes, vbytes) in self.restored.remove(name).unwrap_or_default() {
                if !self.range.contains(kg) {
                    continue;
                }
                let key: K = postcard::from_bytes(&kbytes).map_err(|e| {
                    UserError::msg(format!(
                        "operator '{}': state '{name}': cannot decode a restored key: {e} \
                         (did the key type change?)",
                        self.operator
                    ))
                })?;
                let entry = S::decode(&vbytes, with_ttl).map_err(|e| {
                    UserError::msg(format!(
                        "operator '{}': state '{name}': cannot decode a restored value: {e} \
                         (did the state type change?)",
                        self.operator
                    ))
                })?;
                table.map.insert(key, entry);
            }
            self.restored_meta.remove(name);
        }
        let id = self.tables.len();
        self.tables.push(Box::new(table));
        self.metas.push(KeyedStateMeta {
            name: name.to_string(),
            kind: kind.to_string(),
            ttl: ttl.map(|t| t.meta()),
        });
        self.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    pub(crate) fn table<S: Stored>(&mut self, id: usize) -> Result<&mut Table<K, S>, UserError> {
        self.tables
            .get_mut(id)
            .and_then(|t| t.as_any().downcast_mut::<Table<K, S>>())
            .ok_or_else(|| {
                UserError::msg(format!(
                    "operator '{}': state handle {id} does not belong to this operator",
                    self.operator
                ))
            })
    }

    /// Number of entries in a registered state (for tests and metrics).
    pub fn entries(&self, name: &str) -> usize {
        self.by_name
            .get(name)
            .map(|&id| self.tables[id].len())
            .unwrap_or(0)
    }

    /// Snapshot: entries grouped by key group, plus descriptor metadata.
    pub(crate) fn snapshot(
        &self,
        out: &mut BTreeMap<u32, KeyGroupData>,
    ) -> Result<(Vec<KeyedStateMeta>, u64), SnapshotError> {
        let now = self.clock.now_ms();
        let mut n = 0;
        for (i, t) in self.tables.iter().enumerate() {
            n += t.snapshot(&self.metas[i].name, now, self.max_parallelism, out)?;
        }
        let mut metas = self.metas.clone();
        for (name, entries) in &self.restored {
            for (kg, k, v) in entries {
                if self.range.contains(*kg) {
                    push_entry(out, *kg, name, k.to_vec(), v.to_vec());
                    n += 1;
                }
            }
        }
        metas.extend(self.restored_meta.values().cloned());
        metas.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((metas, n))
    }
}

/// Gives state handles access to the backend and the current key.
pub trait KeyedStateAccess<K> {
    fn keyed_parts(&mut self) -> (&mut KeyedBackend<K>, &K);
}

// ---- descriptors -----------------------------------------------------------

macro_rules! descriptor {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Debug)]
        pub struct $name<V> {
            pub name: String,
            pub ttl: Option<TtlConfig>,
            _p: PhantomData<fn() -> V>,
        }
        impl<V> $name<V> {
            pub fn new(name: impl Into<String>) -> Self {
                Self {
                    name: name.into(),
                    ttl: None,
                    _p: PhantomData,
                }
            }
            pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
                self.ttl = Some(ttl);
                self
            }
        }
    };
}

descriptor!(ValueStateDescriptor, "Describes a [`ValueState`].");
descriptor!(ListStateDescriptor, "Describes a [`ListState`].");

#[derive(Clone, Debug)]
pub struct MapStateDescriptor<UK, UV> {
    pub name: String,
    pub ttl: Option<TtlConfig>,
    _p: PhantomData<fn() -> (UK, UV)>,
}
impl<UK, UV> MapStateDescriptor<UK, UV> {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ttl: None,
            _p: PhantomData,
        }
    }
    pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

type ReduceFn<V> = std::sync::Arc<dyn Fn(&V, &V) -> V + Send + Sync>;

/// Describes a [`ReducingState`]: values are combined with `reduce` as they are added.
pub struct ReducingStateDescriptor<V> {
    pub name: String,
    pub ttl: Option<TtlConfig>,
    reduce: ReduceFn<V>,
}
impl<V> Clone for ReducingStateDescriptor<V> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            ttl: self.ttl,
            reduce: self.reduce.clone(),
        }
    }
}
impl<V> ReducingStateDescriptor<V> {
    pub fn new(
        name: impl Into<String>,
        reduce: impl Fn(&V, &V) -> V + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            ttl: None,
            reduce: std::sync::Arc::new(reduce),
        }
    }
    pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// Flink's AggregateFunction: an accumulator that values are added to, and a result.
pub trait AggregateFunction<In, Acc, Out>: Send + Sync + 'static {
    fn create_accumulator(&self) -> Acc;
    fn add(&self, value: In, acc: &mut Acc);
    fn get_result(&self, acc: &Acc) -> Out;
}

pub struct AggregatingStateDescriptor<In, Acc, Out> {
    pub name: String,
    pub ttl: Option<TtlConfig>,
    agg: std::sync::Arc<dyn AggregateFunction<In, Acc, Out>>,
}
impl<In, Acc, Out> Clone for AggregatingStateDescriptor<In, Acc, Out> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            ttl: self.ttl,
            agg: self.agg.clone(),
        }
    }
}
impl<In, Acc, Out> AggregatingStateDescriptor<In, Acc, Out> {
    pub fn new(name: impl Into<String>, agg: impl AggregateFunction<In, Acc, Out>) -> Self {
        Self {
            name: name.into(),
            ttl: None,
            agg: std::sync::Arc::new(agg),
        }
    }
    pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

// ---- handles -----------------------------------------------------------------

fn now_if(b: &impl HasClock, ttl: &Option<TtlConfig>) -> i64 {
    if ttl.is_some() { b.now() } else { 0 }
}

trait HasClock {
    fn now(&self) -> i64;
}
impl<K> HasClock for KeyedBackend<K> {
    fn now(&self) -> i64 {
        self.clock.now_ms()
    }
}

/// Reads a single-entry state with TTL semantics (shared by value, reducing and
/// aggregating state).
fn read_entry<K: Key, V: StateValue>(t: &mut Table<K, Entry<V>>, key: &K, now: i64) -> Option<V> {
    let ts = t.map.get(key)?.ts;
    match on_read(t.ttl.as_ref(), ts, now) {
        ReadOutcome::Live { refresh } => {
            let e = t.map.get_mut(key)?;
            if refresh {
                e.ts = now;
            }
            Some(e.v.clone())
        }
        ReadOutcome::Expired { return_it } => {
            let e = t.map.remove(key)?;
            return_it.then_some(e.v)
        }
    }
}

/// Handle to a value state; the value is scoped to the current key.
#[derive(Clone, Debug)]
pub struct ValueState<V> {
    id: usize,
    ttl: Option<TtlConfig>,
    _p: PhantomData<fn() -> V>,
}

impl<V: StateValue> ValueState<V> {
    pub(crate) fn register<K: Key>(
        b: &mut KeyedBackend<K>,
        d: &ValueStateDescriptor<V>,
    ) -> Result<Self, UserError> {
        let id = b.register::<Entry<V>>(&d.name, "value", d.ttl)?;
        Ok(ValueState {
            id,
            ttl: d.ttl,
            _p: PhantomData,
        })
    }
    pub fn value<K: Key>(
        &self,
        ctx: &mut impl KeyedStateAccess<K>,
    ) -> Result<Option<V>, UserError> {
        let (b, key) = ctx.keyed_parts();
        let now = now_if(b, &self.ttl);
        let t = b.table::<Entry<V>>(self.id)?;
        Ok(read_entry(t, key, now))
    }
    pub fn update<K: Key>(
        &self,
        ctx: &mut impl KeyedStateAccess<K>,
        v: V,
    ) -> Result<(), UserError> {
        let (b, key) = ctx.keyed_parts();
        let now = now_if(b, &self.ttl);
        let t = b.table::<Entry<V>>(self.id)?;
        match t.map.get_mut(key) {
            Some(e) => {
                e.v = v;
                e.ts = now;
            }
            None => {
                t.map.insert(key.clone(), Entry { v, ts: now });
            }
        }
        Ok(())
    }
    pub fn clear<K: Key>(&self, ctx: &mut impl KeyedStateAccess<K>) -> Result<(), UserError> {
        let (b, key) = ctx.keyed_parts();
        b.table::<Entry<V>>(self.id)?.map.remove(key);
        Ok(())
    }
}

/// Handle to a list state; each element carries its own TTL timestamp.
#[derive(Clone, Debug)]
pub struct ListState<V> {
    id: usize,
    ttl: Option<TtlConfig>,
    _p: PhantomData<fn() -> V>,
}

impl<V: StateValue> ListState<V> {
    pub(crate) fn register<K: Key>(
        b: &mut KeyedBackend<K>,
        d: &ListStateDescriptor<V>,
    ) -> Result<Self, UserError> {
        let id = b.register::<ListEntries<V>>(&d.name, "list", d.ttl)?;
        Ok(ListState {
            id,
            ttl: d.ttl,
            _p: PhantomData,
        })
    }
    /// The live elements, in insertion order. Expired elements are removed.
    pub fn get<K: Key>(&self, ctx: &mut impl KeyedStateAccess<K>) -> Result<Vec<V>, UserError> {
        let (b, key) = ctx.keyed_parts();
        let now = now_if(b, &self.ttl);
        let t = b.table::<ListEntries<V>>(self.id)?;
        let ttl = t.ttl;
        let Some(list) = t.map.get_mut(key) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(list.0.len());
        list.0
            .retain_mut(|e| match on_read(ttl.as_ref(), e.ts, now) {
                ReadOutcome::Live { refresh } => {
                    if refresh {
                        e.ts = now;
                    }
                    out.push(e.v.clone());
                    true
                }
                ReadOutcome::Expired { return_it } => {
                    if return_it {
                        out.push(e.v.clone());
                    }
                    false
                }
            });
        if list.0.is_empty() {
            t.map.remove(key);
        }
        Ok(out)
    }
    pub fn add<K: Key>(&self, ctx: &mut impl KeyedStateAccess<K>, v: V) -> Result<(), UserError> {
        let (b, key) = ctx.keyed_parts();
        let now = now_if(b, &self.ttl);
        let t = b.table::<ListEntries<V>>(self.id)?;
        match t.map.get_mut(key) {
            Some(l) => l.0.push(Entry { v, ts: now }),
            None => {
                t.map
                    .insert(key.clone(), ListEntries(vec![Entry { v, ts: now }]));
            }
        }
        Ok(())
    }
    pub fn update<K: Key>(
        &self,
        ctx: &mut impl KeyedStateAccess<K>,
        vs: Vec<V>,
    ) -> Result<(), UserError> {
        let (b, key) = ctx.keyed_parts();
        let now = now_if(b, &self.ttl);
        let t = b.table::<ListEntries<V>>(self.id)?;
        if vs.is_empty() {
            t.map.remove(key);
        } else {
            t.map.insert(
                key.clone(),
                ListEntries(vs.into_iter().map(|v| Entry { v, ts: now }).collect()),
            );
        }
        Ok(())
    }
    pub fn clear<K: Key>(&self, ctx: &mut impl KeyedStateAccess<K>) -> Result<(), UserError> {
        let (b, key) = ctx.keyed_parts();
        b.table::<ListEntries<V>>(self.id)?.map.remove(key);
        Ok(())
    }
}

/// Handle to a map state; each map entry carries its own TTL timestamp.
#[derive(Clone, Debug)]
pub struct MapState<UK, UV> {
    id: usize,
    ttl: Option<TtlConfig>,
    _p: PhantomData<fn() -> (UK, UV)>,
}

impl<UK: Key, UV: StateValue> MapState<UK, UV> {
    pub(crate) fn register<K: Key>(
        b: &mut KeyedBackend<K>,
        d: &MapStateDescriptor<UK, UV>,
    ) -> Result<Self, UserError> {
        let id = b.register::<MapEntries<UK, UV>>(&d.name, "map", d.ttl)?;
        Ok(MapState {
            id,
            ttl: d.ttl,
            _p: PhantomData,
        })
    }
    pub fn get<K: Key>(
        &self,
        ctx: &mut impl KeyedStateAccess<K>,
        uk: &UK,
    ) -> Result<Option<UV>, UserError> {
        let (b, key) = ctx.keyed_parts();
        let now = now_if(b, &self.ttl);
        let t = b.table::<MapEntries<UK, UV>>(self.id)?;
        let ttl = t.ttl;
        let Some(m) = t.map.get_mut(key) else {
            return Ok(None);
        };
        let Some(ts) = m.0.get(uk).map(|e| e.ts) else {
            return Ok(None);
        };
        let out = match on_read(ttl.as_ref(), ts, now) {
            ReadOutcome::Live { refresh } => m.0.get_mut(uk).map(|e| {
                if refresh {
                    e.ts = now;
                }
                e.v.clone()
            }),
            ReadOutcome::Expired { return_it } => {
                let e = m.0.remove(uk);
                if return_it { e.map(|e| e.v) } else { None }
            }
        };
        if m.0.is_empty() {
            t.map.remove(key);
        }
        Ok(out)
    }
    pub fn put<K: Key>(
        &self,
        ctx: &mut impl KeyedStateAccess<K>,
        uk: UK,
        uv: UV,
    ) -> Result<(), UserError> {
        let (b, key) = ctx.keyed_parts();
        let now = now_if(b, &self.ttl);
        let t = b.table::<MapEntries<UK, UV>>(self.id)?;
        if let Some(m) = t.map.get_mut(key) {
            m.0.insert(uk, Entry { v: uv, ts: now });
        } else {
            let mut m = FastMap::default();
            m.insert(uk, Entry { v: uv, ts: now });
            t.map.insert(key.clone(), MapEntries(m));
        }
        Ok(())
    }
    pub fn remove<K: Key>(
        &self,
        ctx: &mut impl KeyedStateAccess<K>,
        uk: &UK,
    ) -> Result<(), UserError> {
        let (b, key) = ctx.keyed_parts();
        let t = b.table::<MapEntries<UK, UV>>(self.id)?;
        if let Some(m) = t.map.get_mut(key) {
            m.0.remove(uk);
            if m.0.is_empty() {
                t.map.remove(key);
            }
        }
        Ok(())
    }
    /// All live entries (expired ones are removed, or returned once if visible).
    pub fn entries<K: Key>(
        &self,
        ctx: &mut impl KeyedStateAccess<K>,
    ) -> Result<Vec<(UK, UV)>, UserError> {
        let (b, key) = ctx.keyed_parts();
        let now = now_if(b, &self.ttl);
        let t = b.table::<MapEntries<UK, UV>>(self.id)?;
        let ttl = t.ttl;
        let Some(m) = t.map.get_mut(key) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(m.0.len());
        m.0.retain(|k, e| match on_read(ttl.as_ref(), e.ts, now) {
            ReadOutcome::Live { refresh } => {
                if refresh {
                    e.ts = now;
                }
                out.push((k.clone(), e.v.clone()));
                true
            }
            ReadOutcome::Expired { return_it } => {
                if return_it {
                    out.push((k.clone(), e.v.clone()));
                }
                false
            }
        });
        if m.0.is_empty() {
            t.map.remove(key);
        }
        Ok(out)
    }
    pub fn clear<K: Key>(&self, ctx: &mut impl KeyedStateAccess<K>) -> Result<(), UserError> {
        let (b, key) = ctx.keyed_parts();
        b.table::<MapEntries<UK, UV>>(self.id)?.map.remove(key);
        Ok(())
    }
}

/// Handle to a reducing state.
pub struct ReducingState<V> {
    id: usize,
    ttl: Option<TtlConfig>,
    reduce: ReduceFn<V>,
}
impl<V> Clone for ReducingState<V> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            ttl: self.ttl,
            reduce: self.reduce.clone(),
        }
    }
}

impl<V: StateValue> ReducingState<V> {
    pub(crate) fn register<K: Key>(
        b: &mut KeyedBackend<K>,
        d: &ReducingStateDescriptor<V>,
    ) -> Result<Self, UserError> {
        let id = b.register::<Entry<V>>(&d.name, "reducing", d.ttl)?;
        Ok(ReducingState {
            id,
            ttl: d.ttl,
            reduce: d.reduce.clone(),
        })
    }
    pub fn get<K: Key>(&self, ctx: &mut impl KeyedStateAccess<K>) -> Result<Option<V>, UserError> {
        let (b, key) = ctx.keyed_parts();
        let now = now_if(b, &self.ttl);
        Ok(read_entry(b.table::<Entry<V>>(self.id)?, key, now))
    }
    pub fn add<K: Key>(&self, ctx: &mut impl KeyedStateAccess<K>, v: V) -> Result<(), UserError> {
        let (b, key) = ctx.keyed_parts();
        let now = now_if(b, &self.ttl);
        let t = b.table::<Entry<V>>(self.id)?;
        // An expired accumulator is never folded into: adding starts afresh.
        let current = read_entry_for_write(t, key, now);
        let next = match current {
            Some(c) => (self.reduce)(&c, &v),
            None => v,
        };
        t.map.insert(key.clone(), Entry { v: next, ts: now });
        Ok(())
    }
    pub fn clear<K: Key>(&self, ctx: &mut impl KeyedStateAccess<K>) -> Result<(), UserError> {
        let (b, key) = ctx.keyed_parts();
        b.table::<Entry<V>>(self.id)?.map.remove(key);
        Ok(())
    }
}

fn read_entry_for_write<K: Key, V: StateValue>(
    t: &mut Table<K, Entry<V>>,
    key: &K,
    now: i64,
) -> Option<V> {
    let e = t.map.get(key)?;
    match &t.ttl {
        Some(ttl) if ttl.is_expired(e.ts, now) => {
            t.map.remove(key);
            None
        }
        _ => Some(e.v.clone()),
    }
}

/// Handle to an aggregating state.
pub struct AggregatingState<In, Acc, Out> {
    id: usize,
    ttl: Option<TtlConfig>,
    agg: std::sync::Arc<dyn AggregateFunction<In, Acc, Out>>,
}
impl<In, Acc, Out> Clone for AggregatingState<In, Acc, Out> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            ttl: self.ttl,
            agg: self.agg.clone(),
        }
    }
}

impl<In: 'static, Acc: StateValue, Out: 'static> AggregatingState<In, Acc, Out> {
    pub(crate) fn register<K: Key>(
        b: &mut KeyedBackend<K>,
        d: &AggregatingStateDescriptor<In, Acc, Out>,
    ) -> Result<Self, UserError> {
        let id = b.register::<Entry<Acc>>(&d.name, "aggregating", d.ttl)?;
        Ok(AggregatingState {
            id,
            ttl: d.ttl,
            agg: d.agg.clone(),
        })
    }
    pub fn get<K: Key>(
        &self,
        ctx: &mut impl KeyedStateAccess<K>,
    ) -> Result<Option<Out>, UserError> {
        let (b, key) = ctx.keyed_parts();
        let now = now_if(b, &self.ttl);
        let acc = read_entry(b.table::<Entry<Acc>>(self.id)?, key, now);
        Ok(acc.map(|a| self.agg.get_result(&a)))
    }
    pub fn add<K: Key>(&self, ctx: &mut impl KeyedStateAccess<K>, v: In) -> Result<(), UserError> {
        let (b, key) = ctx.keyed_parts();
        let now = now_if(b, &self.ttl);
        let t = b.table::<Entry<Acc>>(self.id)?;
        let mut acc =
            read_entry_for_write(t, key, now).unwrap_or_else(|| self.agg.create_accumulator());
        self.agg.add(v, &mut acc);
        t.map.insert(key.clone(), Entry { v: acc, ts: now });
        Ok(())
    }
    pub fn clear<K: Key>(&self, ctx: &mut impl KeyedStateAccess<K>) -> Result<(), UserError> {
        let (b, key) = ctx.keyed_parts();
        b.table::<Entry<Acc>>(self.id)?.map.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::state::ttl::{UpdateType, Visibility};

    struct Ctx<'a> {
        b: &'a mut KeyedBackend<u64>,
        k: u64,
    }
    impl KeyedStateAccess<u64> for Ctx<'_> {
        fn keyed_parts(&mut self) -> (&mut KeyedBackend<u64>, &u64) {
            (self.b, &self.k)
        }
    }

    fn backend(clock: Clock) -> KeyedBackend<u64> {
        KeyedBackend::new("op", clock, 128, KeyGroupRange::new(0, 127), vec![], vec![])
    }

    fn ttl(update: UpdateType, vis: Visibility) -> TtlConfig {
        TtlConfig::new(Duration::from_millis(100))
            .update_type(update)
            .visibility(vis)
    }

    #[test]
    fn value_ttl_every_configuration() {
        for update in [UpdateType::OnCreateAndWrite, UpdateType::OnReadAndWrite] {
            for vis in [
                Visibility::NeverReturnExpired,
                Visibility::ReturnExpiredIfNotCleanedUp,
            ] {
                let (clock, t) = Clock::manual(1_000);
                let mut b = backend(clock);
                let d = ValueStateDescriptor::<u64>::new("v").with_ttl(ttl(update, vis));
                let s = ValueState::register(&mut b, &d).unwrap();
                let mut c = Ctx { b: &mut b, k: 7 };
                s.update(&mut c, 1).unwrap();
                t.set(1_090);
                assert_eq!(s.value(&mut c).unwrap(), Some(1), "live before ttl");
                // A read at 1090 refreshes only with OnReadAndWrite.
                t.set(1_150);
                let read = s.value(&mut c).unwrap();
                match update {
                    UpdateType::OnReadAndWrite => {
                        assert_eq!(read, Some(1), "read refreshed the timestamp")
                    }
                    UpdateType::OnCreateAndWrite => match vis {
                        Visibility::NeverReturnExpired => assert_eq!(read, None),
                        Visibility::ReturnExpiredIfNotCleanedUp => {
                            assert_eq!(read, Some(1), "expired but not yet cleaned up")
                        }
                    },
                }
                // Expired values are cleaned up on read: a second read never sees them.
                t.set(10_000);
                let first = s.value(&mut c).unwrap();
                assert_eq!(
                    first,
                    if vis == Visibility::ReturnExpiredIfNotCleanedUp
                        && update == UpdateType::OnReadAndWrite
                    {
                        Some(1)
                    } else {
                        None
                    }
                );
                assert_eq!(s.value(&mut c).unwrap(), None, "cleaned up on read");
                assert_eq!(c.b.entries("v"), 0);
                // Writing refreshes under both update types.
                s.update(&mut c, 2).unwrap();
                t.set(10_099);
                assert_eq!(s.value(&mut c).unwrap(), Some(2));
            }
        }
    }

    #[test]
    fn list_and_map_ttl_is_per_element() {
        let (clock, t) = Clock::manual(0);
        let mut b = backend(clock);
        let cfg = ttl(UpdateType::OnCreateAndWrite, Visibility::NeverReturnExpired);
        let l = ListState::register(&mut b, &ListStateDescriptor::<u32>::new("l").with_ttl(cfg))
            .unwrap();
        let m = MapState::register(
            &mut b,
            &MapStateDescriptor::<u32, u32>::new("m").with_ttl(cfg),
        )
        .unwrap();
        let mut c = Ctx { b: &mut b, k: 1 };
        l.add(&mut c, 1).unwrap();
        m.put(&mut c, 1, 10).unwrap();
        t.set(60);
        l.add(&mut c, 2).unwrap();
        m.put(&mut c, 2, 20).unwrap();
        t.set(120);
        assert_eq!(l.get(&mut c).unwrap(), vec![2]);
        assert_eq!(m.get(&mut c, &1).unwrap(), None);
        assert_eq!(m.entries(&mut c).unwrap(), vec![(2, 20)]);
        t.set(200);
        assert!(l.get(&mut c).unwrap().is_empty());
        assert_eq!(c.b.entries("l"), 0, "an emptied list is removed");
    }

    #[test]
    fn reducing_and_aggregating_start_afresh_after_expiry() {
        struct Avg;
        impl AggregateFunction<u64, (u64, u64), f64> for Avg {
            fn create_accumulator(&self) -> (u64, u64) {
                (0, 0)
            }
            fn add(&self, v: u64, acc: &mut (u64, u64)) {
                acc.0 += 1;
                acc.1 += v;
            }
            fn get_result(&self, acc: &(u64, u64)) -> f64 {
                acc.1 as f64 / acc.0 as f64
            }
        }
        let (clock, t) = Clock::manual(0);
        let mut b = backend(clock);
        let cfg = ttl(UpdateType::OnCreateAndWrite, Visibility::NeverReturnExpired);
        let r = ReducingState::register(
            &mut b,
            &ReducingStateDescriptor::new("sum", |a: &u64, b: &u64| a + b).with_ttl(cfg),
        )
        .unwrap();
        let a = AggregatingState::register(
            &mut b,
            &AggregatingStateDescriptor::new("avg", Avg).with_ttl(cfg),
        )
        .unwrap();
        let mut c = Ctx { b: &mut b, k: 3 };
        for v in [2, 4] {
            r.add(&mut c, v).unwrap();
            a.add(&mut c, v).unwrap();
        }
        assert_eq!(r.get(&mut c).unwrap(), Some(6));
        assert_eq!(a.get(&mut c).unwrap(), Some(3.0));
        t.set(500);
        r.add(&mut c, 10).unwrap();
        a.add(&mut c, 10).unwrap();
        assert_eq!(
            r.get(&mut c).unwrap(),
            Some(10),
            "expired sum is not folded into"
        );
        assert_eq!(a.get(&mut c).unwrap(), Some(10.0));
    }

    fn snapshot_groups(b: &KeyedBackend<u64>) -> (Vec<KeyGroupData>, Vec<KeyedStateMeta>) {
        let mut out = BTreeMap::new();
        let (metas, _) = b.snapshot(&mut out).unwrap();
        (out.into_values().collect(), metas)
    }

    #[test]
    fn full_snapshot_cleanup_drops_expired_entries_only_when_enabled() {
        for cleanup in [false, true] {
            let (clock, t): (Clock, ManualClock) = Clock::manual(0);
            let mut b = backend(clock.clone());
            let mut cfg = ttl(
                UpdateType::OnCreateAndWrite,
                Visibility::ReturnExpiredIfNotCleanedUp,
            );
            if cleanup {
                cfg = cfg.cleanup_full_snapshot();
            }
            let s =
                ValueState::register(&mut b, &ValueStateDescriptor::<u64>::new("v").with_ttl(cfg))
                    .unwrap();
            for k in 0..10 {
                s.update(&mut Ctx { b: &mut b, k }, k).unwrap();
            }
            t.set(50);
            for k in 10..20 {
                s.update(&mut Ctx { b: &mut b, k }, k).unwrap();
            }
            t.set(120); // keys 0..10 expired, 10..20 live
            let (groups, metas) = snapshot_groups(&b);
            let n: usize = groups
                .iter()
                .flat_map(|g| &g.tables)
                .map(|t| t.entries.len())
                .sum();
            assert_eq!(n, if cleanup { 10 } else { 20 });
            let mut r = KeyedBackend::<u64>::new(
                "op",
                clock.clone(),
                128,
                KeyGroupRange::new(0, 127),
                groups,
                metas,
            );
            let s2 =
                ValueState::register(&mut r, &ValueStateDescriptor::<u64>::new("v").with_ttl(cfg))
                    .unwrap();
            let expired_read = s2.value(&mut Ctx { b: &mut r, k: 3 }).unwrap();
            assert_eq!(
                expired_read,
                if cleanup { None } else { Some(3) },
                "ReturnExpiredIfNotCleanedUp sees it only if not cleaned"
            );
            assert_eq!(s2.value(&mut Ctx { b: &mut r, k: 15 }).unwrap(), Some(15));
        }
    }

    #[test]
    fn restore_with_mismatched_ttl_fails_clearly() {
        let (clock, _t) = Clock::manual(0);
        let mut b = backend(clock.clone());
        let s = ValueState::register(&mut b, &ValueStateDescriptor::<u64>::new("v")).unwrap();
        s.update(&mut Ctx { b: &mut b, k: 1 }, 5).unwrap();
        let (groups, metas) = snapshot_groups(&b);
        let mut r = KeyedBackend::<u64>::new(
            "op",
            clock.clone(),
            128,
            KeyGroupRange::new(0, 127),
            groups.clone(),
            metas.clone(),
        );
        let cfg = ttl(UpdateType::OnCreateAndWrite, Visibility::NeverReturnExpired);
        let err =
            ValueState::register(&mut r, &ValueStateDescriptor::<u64>::new("v").with_ttl(cfg))
                .unwrap_err();
        assert!(
            err.to_string()
                .contains("written without TTL but the job now enables TTL"),
            "{err}"
        );
        assert!(r.incompatible.is_some());
        // The other direction too.
        let mut w = backend(clock.clone());
        let s = ValueState::register(&mut w, &ValueStateDescriptor::<u64>::new("v").with_ttl(cfg))
            .unwrap();
        s.update(&mut Ctx { b: &mut w, k: 1 }, 5).unwrap();
        let (g2, m2) = snapshot_groups(&w);
        let mut r2 =
            KeyedBackend::<u64>::new("op", clock.clone(), 128, KeyGroupRange::new(0, 127), g2, m2);
        let err =
            ValueState::register(&mut r2, &ValueStateDescriptor::<u64>::new("v")).unwrap_err();
        assert!(
            err.to_string()
                .contains("written with TTL but the job now disables TTL"),
            "{err}"
        );
        // A kind change is refused as well.
        let mut r3 =
            KeyedBackend::<u64>::new("op", clock, 128, KeyGroupRange::new(0, 127), groups, metas);
        let err = ListState::register(&mut r3, &ListStateDescriptor::<u64>::new("v")).unwrap_err();
        assert!(
            err.to_string().contains("was written as value state"),
            "{err}"
        );
    }

    #[test]
    fn unregistered_restored_state_is_carried_into_the_next_snapshot() {
        let (clock, _t) = Clock::manual(0);
        let mut b = backend(clock.clone());
        let s = ValueState::register(&mut b, &ValueStateDescriptor::<u64>::new("old")).unwrap();
        s.update(&mut Ctx { b: &mut b, k: 1 }, 5).unwrap();
        let (groups, metas) = snapshot_groups(&b);
        let r = KeyedBackend::<u64>::new(
            "op",
            clock,
            128,
            KeyGroupRange::new(0, 127),
            groups.clone(),
            metas.clone(),
        );
        let (g2, m2) = snapshot_groups(&r);
        assert_eq!(g2, groups);
        assert_eq!(m2, metas);
    }
}
