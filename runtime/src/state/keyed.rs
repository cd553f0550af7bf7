//! Heap keyed state backend. One table per registered state descriptor, each a hash
//! map from key to a typed entry. Snapshots group entries by key group so that a
//! restore at another parallelism takes whole key groups.

use std::any::TypeId;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::cow_map::{CowMap, Frozen, Slot};
use super::ttl::{ReadOutcome, TtlConfig, on_read};
use crate::checkpoint::format::{Entries, KeyGroupData, KeyedStateMeta, TableData};
use crate::clock::Clock;
use crate::error::{SnapshotError, UserError};
use crate::keygroup::{KeyGroupRange, key_group_for_bytes};

/// A key of a keyed stream. Its postcard encoding is what the key-group hash sees.
/// `Sync` because a checkpoint serializes a frozen view of the state on another
/// thread while the task keeps reading it (see `cow_map`).
pub trait Key: Clone + Eq + Hash + Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Clone + Eq + Hash + Serialize + DeserializeOwned + Send + Sync + 'static> Key for T {}

/// A value kept in state. `Sync` for the same reason as [`Key`].
pub trait StateValue: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static> StateValue for T {}

pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// How an entry type is persisted. With TTL the last-access timestamps are written
/// too, which is why restoring with a different TTL setting is refused.
pub(crate) trait Stored: Clone + Send + Sync + Sized + 'static {
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
#[derive(Clone)]
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
#[derive(Clone)]
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
    pub map: CowMap<K, S>,
    pub ttl: Option<TtlConfig>,
}

trait ErasedTable<K>: Send {
    /// O(shards): a consistent view to serialize later, on another thread.
    fn freeze(&mut self) -> Box<dyn FrozenTable>;
    fn len(&self) -> usize;
}

impl<K: Key, S: Stored> ErasedTable<K> for Table<K, S> {
    fn freeze(&mut self) -> Box<dyn FrozenTable> {
        Box::new(FrozenTableOf {
            map: self.map.snapshot(),
            ttl: self.ttl,
        })
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// A table as it was at barrier time, serialized by the snapshot uploader.
trait FrozenTable: Send {
    fn write(
        &self,
        name: &str,
        now: i64,
        max_parallelism: u32,
        out: &mut BTreeMap<u32, KeyGroupData>,
    ) -> Result<u64, SnapshotError>;
}

struct FrozenTableOf<K, S> {
    map: Frozen<K, S>,
    ttl: Option<TtlConfig>,
}

impl<K: Key, S: Stored> FrozenTable for FrozenTableOf<K, S> {
    fn write(
        &self,
        name: &str,
        now: i64,
        max_parallelism: u32,
        out: &mut BTreeMap<u32, KeyGroupData>,
    ) -> Result<u64, SnapshotError> {
        let drop_expired = self.ttl.map(|t| t.cleanup_full_snapshot).unwrap_or(false);
        let mut n = 0u64;
        // Grouped per key group locally first, so the per-entry cost is an index
        // instead of a map lookup plus a search for the table by name. Each
        // entry is encoded into the same two buffers and copied into its key
        // group's chunks: no allocation per entry.
        let mut by_kg: Vec<Entries> = (0..max_parallelism).map(|_| Entries::new()).collect();
        let (mut kbuf, mut vbuf) = (Vec::new(), Vec::new());
        for (k, s) in self.map.iter() {
            vbuf.clear();
            if !s
                .encode(self.ttl.as_ref(), now, drop_expired, &mut vbuf)
                .map_err(SnapshotError::Encode)?
            {
                continue;
            }
            kbuf.clear();
            kbuf = postcard::to_extend(k, std::mem::take(&mut kbuf))
                .map_err(|e| SnapshotError::Encode(e.to_string()))?;
            let kg = key_group_for_bytes(&kbuf, max_parallelism);
            match by_kg.get_mut(kg as usize) {
                Some(list) => list
                    .push(&kbuf, &vbuf)
                    .map_err(|e| SnapshotError::Encode(e.to_string()))?,
                None => push_entry(out, kg, name, &kbuf, &vbuf)?,
            }
            n += 1;
        }
        for (kg, entries) in by_kg.into_iter().enumerate() {
            if !entries.is_empty() {
                append_entries(out, kg as u32, name, entries);
            }
        }
        Ok(n)
    }
}

/// Appends entries of one table and key group (same layout as `push_entry`).
fn append_entries(out: &mut BTreeMap<u32, KeyGroupData>, kg: u32, name: &str, entries: Entries) {
    let group = out.entry(kg).or_insert_with(|| KeyGroupData {
        key_group: kg,
        ..Default::default()
    });
    match group.tables.iter_mut().find(|t| t.name == name) {
        Some(t) => t.entries.append(entries),
        None => group.tables.push(TableData {
            name: name.to_string(),
            entries,
        }),
    }
}

fn push_entry(
    out: &mut BTreeMap<u32, KeyGroupData>,
    kg: u32,
    name: &str,
    k: &[u8],
    v: &[u8],
) -> Result<(), SnapshotError> {
    let mut one = Entries::new();
    one.push(k, v)
        .map_err(|e| SnapshotError::Encode(e.to_string()))?;
    append_entries(out, kg, name, one);
    Ok(())
}

/// Restored entries of one state, by key group, as the state file held them.
type RawEntries = Vec<(u32, Entries)>;

/// The keyed state of one operator subtask.
pub struct KeyedBackend<K> {
    operator: String,
    tables: Vec<Box<dyn ErasedTable<K>>>,
    /// `TypeId` of the concrete `Table<K, S>` behind each entry of `tables`.
    table_types: Vec<TypeId>,
    metas: Vec<KeyedStateMeta>,
    by_name: HashMap<String, usize>,
    /// Restored entries of states not (yet) registered, by state name. They are
    /// carried into later snapshots unchanged, so no state is lost silently.
    restored: HashMap<String, Arc<RawEntries>>,
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
        let mut restored: HashMap<String, RawEntries> = HashMap::new();
        for g in restored_groups {
            for t in g.tables {
                restored
                    .entry(t.name)
                    .or_default()
                    .push((g.key_group, t.entries));
            }
        }
        KeyedBackend {
            operator: operator.to_string(),
            tables: Vec::new(),
            table_types: Vec::new(),
            metas: Vec::new(),
            by_name: HashMap::new(),
            restored: restored
                .into_iter()
                .map(|(name, list)| (name, Arc::new(list)))
                .collect(),
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
            map: CowMap::new(),
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
            let raw = self.restored.remove(name).unwrap_or_default();
            let decode = |table: &mut Table<K, S>, entries: &Entries| {
                for (kbytes, vbytes) in entries {
                    let key: K = postcard::from_bytes(kbytes).map_err(|e| {
                        UserError::msg(format!(
                            "operator '{}': state '{name}': cannot decode a restored key: {e} \
                             (did the key type change?)",
                            self.operator
                        ))
                    })?;
                    let entry = S::decode(vbytes, with_ttl).map_err(|e| {
                        UserError::msg(format!(
                            "operator '{}': state '{name}': cannot decode a restored value: {e} \
                             (did the state type change?)",
                            self.operator
                        ))
                    })?;
                    table.map.insert(key, entry);
                }
                Ok::<(), UserError>(())
            };
            let range = self.range;
            match Arc::try_unwrap(raw) {
                // Each key group's bytes are freed as soon as they are
                // decoded, not after the whole state: the restore need not
                // hold every state twice until registration ends. (The
                // allocator reuses memory freed from the threads that
                // decoded the files only lazily, so a 1 GiB restore still
                // peaked at +1.7 GiB: docs/benchmarks.md, issue 4.)
                Ok(groups) => {
                    for (kg, entries) in groups {
                        if range.contains(kg) {
                            decode(&mut table, &entries)?;
                        }
                    }
                }
                // A snapshot taken before this registration still carries
                // them: read them in place.
                Err(shared) => {
                    for (kg, entries) in shared.iter() {
                        if range.contains(*kg) {
                            decode(&mut table, entries)?;
                        }
                    }
                }
            }
            self.restored_meta.remove(name);
        }
        let id = self.tables.len();
        self.tables.push(Box::new(table));
        self.table_types.push(TypeId::of::<Table<K, S>>());
        self.metas.push(KeyedStateMeta {
            name: name.to_string(),
            kind: kind.to_string(),
            ttl: ttl.map(|t| t.meta()),
        });
        self.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    /// The typed table behind a handle. Runs on every state access, so the type
    /// check compares a `TypeId` recorded at registration instead of going
    /// through `dyn Any` (two virtual calls per access, ~4 % of the keyed
    /// count bench).
    #[inline]
    pub(crate) fn table<S: Stored>(&mut self, id: usize) -> Result<&mut Table<K, S>, UserError> {
        match (self.tables.get_mut(id), self.table_types.get(id)) {
            (Some(t), Some(&ty)) if ty == TypeId::of::<Table<K, S>>() => {
                let p: *mut dyn ErasedTable<K> = &mut **t;
                // SAFETY: `table_types[id]` is the TypeId of the concrete type that
                // was boxed into `tables[id]` (both pushed together in `register`,
                // never changed after), and it equals `Table<K, S>`'s, so the data
                // pointer of the trait object points at a live `Table<K, S>`.
                // This is what `<dyn Any>::downcast_mut` does after its check.
                // The borrow of `self.tables` bounds the returned reference.
                Ok(unsafe { &mut *(p as *mut Table<K, S>) })
            }
            _ => Err(UserError::msg(format!(
                "operator '{}': state handle {id} does not belong to this operator",
                self.operator
            ))),
        }
    }

    /// Number of entries in a registered state (for tests and metrics).
    pub fn entries(&self, name: &str) -> usize {
        self.by_name
            .get(name)
            .map(|&id| self.tables[id].len())
            .unwrap_or(0)
    }

    /// Takes a consistent snapshot in O(tables × shards): nothing is copied or
    /// encoded here, so the barrier passes the task at once. The returned
    /// [`KeyedSnapshot`] is encoded later on the uploader thread, and sees the
    /// state exactly as it was now, whatever the task does meanwhile.
    pub(crate) fn snapshot(&mut self) -> KeyedSnapshot {
        let tables = self
            .tables
            .iter_mut()
            .zip(&self.metas)
            .map(|(t, m)| (m.name.clone(), t.freeze()))
            .collect();
        let mut metas = self.metas.clone();
        metas.extend(self.restored_meta.values().cloned());
        metas.sort_by(|a, b| a.name.cmp(&b.name));
        KeyedSnapshot {
            tables,
            carried: self
                .restored
                .iter()
                .map(|(name, raw)| (name.clone(), raw.clone()))
                .collect(),
            metas,
            now: self.clock.now_ms(),
            max_parallelism: self.max_parallelism,
            range: self.range,
        }
    }
}

/// The keyed state of one subtask at barrier time; `Send`, so that encoding it
/// (the expensive part of a checkpoint) runs off the task thread.
pub(crate) struct KeyedSnapshot {
    tables: Vec<(String, Box<dyn FrozenTable>)>,
    /// Restored entries of states not registered (yet), carried unchanged.
    carried: Vec<(String, Arc<RawEntries>)>,
    metas: Vec<KeyedStateMeta>,
    /// Barrier time, for TTL cleanup during full snapshots.
    now: i64,
    max_parallelism: u32,
    range: KeyGroupRange,
}

impl std::fmt::Debug for KeyedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedSnapshot")
            .field(
                "tables",
                &self.tables.iter().map(|t| &t.0).collect::<Vec<_>>(),
            )
            .field("now", &self.now)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl KeyedSnapshot {
    /// Descriptor metadata of every state in the snapshot, sorted by name.
    pub fn metas(&self) -> &[KeyedStateMeta] {
        &self.metas
    }

    /// Encodes the entries grouped by key group into `out`; returns the number of
    /// entries written.
    pub fn write(&self, out: &mut BTreeMap<u32, KeyGroupData>) -> Result<u64, SnapshotError> {
        let mut n = 0;
        for (name, t) in &self.tables {
            n += t.write(name, self.now, self.max_parallelism, out)?;
        }
        for (name, groups) in &self.carried {
            for (kg, entries) in groups.iter() {
                if self.range.contains(*kg) {
                    n += entries.len() as u64;
                    append_entries(out, *kg, name, entries.clone());
                }
            }
        }
        Ok(n)
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
/// aggregating state). One probe unless the entry must be refreshed or removed;
/// a plain read never copies a shard shared with an in-flight snapshot.
fn read_entry<K: Key, V: StateValue>(t: &mut Table<K, Entry<V>>, key: &K, now: i64) -> Option<V> {
    let e = t.map.get(key)?;
    match on_read(t.ttl.as_ref(), e.ts, now) {
        ReadOutcome::Live { refresh: false } => Some(e.v.clone()),
        ReadOutcome::Live { refresh: true } => {
            let e = t.map.get_mut(key)?;
            e.ts = now;
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
        match t.map.entry(key) {
            Slot::Occupied(e) => {
                e.v = v;
                e.ts = now;
            }
            Slot::Vacant(slot) => {
                slot.insert(Entry { v, ts: now });
            }
        }
        Ok(())
    }
    /// Read-modify-write in one hash probe: `f` gets what [`ValueState::value`]
    /// would return (with the same TTL visibility) and its result is stored as
    /// [`ValueState::update`] would store it. Prefer it to `value` + `update`
    /// on hot paths: that pair looks the key up twice.
    pub fn update_with<K: Key>(
        &self,
        ctx: &mut impl KeyedStateAccess<K>,
        f: impl FnOnce(Option<&V>) -> V,
    ) -> Result<(), UserError> {
        let (b, key) = ctx.keyed_parts();
        let now = now_if(b, &self.ttl);
        let t = b.table::<Entry<V>>(self.id)?;
        let ttl = t.ttl;
        match t.map.entry(key) {
            Slot::Occupied(e) => {
                let visible = match on_read(ttl.as_ref(), e.ts, now) {
                    ReadOutcome::Live { .. } => true,
                    ReadOutcome::Expired { return_it } => return_it,
                };
                e.v = f(visible.then_some(&e.v));
                e.ts = now;
            }
            Slot::Vacant(slot) => {
                slot.insert(Entry {
                    v: f(None),
                    ts: now,
                });
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
    /// Read-modify-write of one entry in place: `f` gets the value that
    /// [`MapState::get`] would return (with the same TTL visibility), or
    /// `init()` when there is none, plus whether there was one; the entry then
    /// counts as written, as after [`MapState::put`]. Prefer it to `get` +
    /// `put` on hot paths: that pair looks the key up twice and clones the
    /// value out and back.
    pub fn update_with<K: Key, R>(
        &self,
        ctx: &mut impl KeyedStateAccess<K>,
        uk: UK,
        init: impl FnOnce() -> UV,
        f: impl FnOnce(&mut UV, bool) -> R,
    ) -> Result<R, UserError> {
        let (b, key) = ctx.keyed_parts();
        let now = now_if(b, &self.ttl);
        let t = b.table::<MapEntries<UK, UV>>(self.id)?;
        let ttl = t.ttl;
        let m = match t.map.entry(key) {
            Slot::Occupied(m) => m,
            Slot::Vacant(slot) => slot.insert(MapEntries(FastMap::default())),
        };
        let (e, existed) = match m.0.entry(uk) {
            std::collections::hash_map::Entry::Occupied(o) => {
                let e = o.into_mut();
                let visible = match on_read(ttl.as_ref(), e.ts, now) {
                    ReadOutcome::Live { .. } => true,
                    ReadOutcome::Expired { return_it } => return_it,
                };
                if !visible {
                    e.v = init();
                }
                (e, visible)
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                (v.insert(Entry { v: init(), ts: now }), false)
            }
        };
        let r = f(&mut e.v, existed);
        e.ts = now;
        Ok(r)
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
        let ttl = t.ttl;
        match t.map.entry(key) {
            Slot::Occupied(e) => {
                // An expired accumulator is never folded into: adding starts afresh.
                e.v = if ttl.is_some_and(|t| t.is_expired(e.ts, now)) {
                    v
                } else {
                    (self.reduce)(&e.v, &v)
                };
                e.ts = now;
            }
            Slot::Vacant(slot) => {
                slot.insert(Entry { v, ts: now });
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
        let ttl = t.ttl;
        match t.map.entry(key) {
            Slot::Occupied(e) => {
                // An expired accumulator is never folded into: adding starts afresh.
                if ttl.is_some_and(|t| t.is_expired(e.ts, now)) {
                    e.v = self.agg.create_accumulator();
                }
                self.agg.add(v, &mut e.v);
                e.ts = now;
            }
            Slot::Vacant(slot) => {
                let mut acc = self.agg.create_accumulator();
                self.agg.add(v, &mut acc);
                slot.insert(Entry { v: acc, ts: now });
            }
        }
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

    fn snapshot_groups(b: &mut KeyedBackend<u64>) -> (Vec<KeyGroupData>, Vec<KeyedStateMeta>) {
        let snap = b.snapshot();
        let mut out = BTreeMap::new();
        snap.write(&mut out).unwrap();
        (out.into_values().collect(), snap.metas().to_vec())
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
            let (groups, metas) = snapshot_groups(&mut b);
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
        let (groups, metas) = snapshot_groups(&mut b);
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
        let (g2, m2) = snapshot_groups(&mut w);
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

    struct SumAgg;
    impl AggregateFunction<u64, u64, u64> for SumAgg {
        fn create_accumulator(&self) -> u64 {
            0
        }
        fn add(&self, v: u64, acc: &mut u64) {
            *acc += v;
        }
        fn get_result(&self, acc: &u64) -> u64 {
            *acc
        }
    }

    struct AllStates {
        v: ValueState<u64>,
        l: ListState<u64>,
        m: MapState<u64, u64>,
        r: ReducingState<u64>,
        a: AggregatingState<u64, u64, u64>,
    }

    fn register_all(b: &mut KeyedBackend<u64>) -> AllStates {
        AllStates {
            v: ValueState::register(b, &ValueStateDescriptor::new("v")).unwrap(),
            l: ListState::register(b, &ListStateDescriptor::new("l")).unwrap(),
            m: MapState::register(b, &MapStateDescriptor::new("m")).unwrap(),
            r: ReducingState::register(
                b,
                &ReducingStateDescriptor::new("r", |a: &u64, b: &u64| a + b),
            )
            .unwrap(),
            a: AggregatingState::register(b, &AggregatingStateDescriptor::new("a", SumAgg))
                .unwrap(),
        }
    }

    type Observed = (
        Option<u64>,
        Vec<u64>,
        Vec<(u64, u64)>,
        Option<u64>,
        Option<u64>,
    );

    fn observe(s: &AllStates, b: &mut KeyedBackend<u64>, k: u64) -> Observed {
        let c = &mut Ctx { b, k };
        let mut m = s.m.entries(c).unwrap();
        m.sort();
        (
            s.v.value(c).unwrap(),
            s.l.get(c).unwrap(),
            m,
            s.r.get(c).unwrap(),
            s.a.get(c).unwrap(),
        )
    }

    /// The barrier-time contract of asynchronous snapshots for every state kind:
    /// a snapshot is taken, then every state of every key is mutated (updated,
    /// added to, cleared), and only then is the snapshot encoded (on another
    /// thread, as the uploader does). Restoring it gives exactly the values at
    /// barrier time; the live backend keeps the mutations.
    #[test]
    fn async_snapshot_encodes_barrier_time_values_of_every_state_kind() {
        let (clock, _t) = Clock::manual(0);
        let mut b = backend(clock.clone());
        let s = register_all(&mut b);
        let keys = 0..64u64;
        for k in keys.clone() {
            let c = &mut Ctx { b: &mut b, k };
            s.v.update(c, k).unwrap();
            s.l.add(c, k).unwrap();
            s.m.put(c, k, k * 10).unwrap();
            s.r.add(c, k).unwrap();
            s.a.add(c, k).unwrap();
        }
        let at_barrier: Vec<Observed> = keys.clone().map(|k| observe(&s, &mut b, k)).collect();
        let snap = b.snapshot();
        for k in keys.clone() {
            let c = &mut Ctx { b: &mut b, k };
            if k % 3 == 0 {
                s.v.clear(c).unwrap();
                s.l.clear(c).unwrap();
                s.m.clear(c).unwrap();
                s.r.clear(c).unwrap();
                s.a.clear(c).unwrap();
            } else {
                s.v.update_with(c, |v| v.copied().unwrap_or(0) + 1000)
                    .unwrap();
                s.l.add(c, 7).unwrap();
                s.m.put(c, 1_000_000 + k, 1).unwrap();
                s.r.add(c, 1000).unwrap();
                s.a.add(c, 1000).unwrap();
            }
        }
        for k in 1000..1100u64 {
            s.v.update(&mut Ctx { b: &mut b, k }, k).unwrap();
        }
        let (groups, metas) = std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let mut out = BTreeMap::new();
                    let n = snap.write(&mut out).unwrap();
                    assert_eq!(n, 5 * 64, "entries at barrier time");
                    (out.into_values().collect::<Vec<_>>(), snap.metas().to_vec())
                })
                .join()
                .unwrap()
        });
        let mut r =
            KeyedBackend::<u64>::new("op", clock, 128, KeyGroupRange::new(0, 127), groups, metas);
        let rs = register_all(&mut r);
        for k in keys.clone() {
            assert_eq!(observe(&rs, &mut r, k), at_barrier[k as usize], "key {k}");
        }
        assert_eq!(rs.v.value(&mut Ctx { b: &mut r, k: 1000 }).unwrap(), None);
        for k in keys {
            let live = observe(&s, &mut b, k);
            if k % 3 == 0 {
                assert_eq!(live, (None, vec![], vec![], None, None));
            } else {
                assert_eq!(live.0, Some(k + 1000));
                assert_eq!(live.1, vec![k, 7]);
                assert_eq!(live.3, Some(k + 1000));
            }
        }
    }

    /// TTL cleanup during a full snapshot judges expiry at barrier time, not at
    /// the (later) time the snapshot is encoded.
    #[test]
    fn snapshot_ttl_cleanup_uses_barrier_time() {
        let (clock, t) = Clock::manual(0);
        let mut b = backend(clock);
        let cfg = ttl(UpdateType::OnCreateAndWrite, Visibility::NeverReturnExpired)
            .cleanup_full_snapshot();
        let s = ValueState::register(&mut b, &ValueStateDescriptor::<u64>::new("v").with_ttl(cfg))
            .unwrap();
        s.update(&mut Ctx { b: &mut b, k: 1 }, 1).unwrap();
        t.set(50);
        let snap = b.snapshot();
        t.set(10_000);
        let mut out = BTreeMap::new();
        assert_eq!(snap.write(&mut out).unwrap(), 1, "live at barrier time");
    }

    #[test]
    fn update_with_follows_value_and_update_under_every_ttl_configuration() {
        for update in [UpdateType::OnCreateAndWrite, UpdateType::OnReadAndWrite] {
            for vis in [
                Visibility::NeverReturnExpired,
                Visibility::ReturnExpiredIfNotCleanedUp,
            ] {
                for ttl_on in [false, true] {
                    // Two backends driven in lockstep: one with value + update,
                    // one with update_with; they must agree at every step.
                    let (clock, t) = Clock::manual(0);
                    let mut d = ValueStateDescriptor::<u64>::new("v");
                    if ttl_on {
                        d = d.with_ttl(ttl(update, vis));
                    }
                    let mut b1 = backend(clock.clone());
                    let mut b2 = backend(clock);
                    let s1 = ValueState::register(&mut b1, &d).unwrap();
                    let s2 = ValueState::register(&mut b2, &d).unwrap();
                    let mut seen = Vec::new();
                    for (step, now) in [0, 10, 50, 200, 210, 400, 401].into_iter().enumerate() {
                        t.set(now);
                        let c1 = &mut Ctx { b: &mut b1, k: 1 };
                        let old = s1.value(c1).unwrap();
                        s1.update(c1, old.unwrap_or(0) * 10 + step as u64).unwrap();
                        let c2 = &mut Ctx { b: &mut b2, k: 1 };
                        let mut got = None;
                        s2.update_with(c2, |v| {
                            got = v.copied();
                            v.copied().unwrap_or(0) * 10 + step as u64
                        })
                        .unwrap();
                        assert_eq!(got, old, "{update:?} {vis:?} ttl={ttl_on} at {now}");
                        seen.push(old);
                    }
                    t.set(1_000);
                    assert_eq!(
                        s1.value(&mut Ctx { b: &mut b1, k: 1 }).unwrap(),
                        s2.value(&mut Ctx { b: &mut b2, k: 1 }).unwrap()
                    );
                    // Without TTL every step saw the previous value.
                    if !ttl_on {
                        assert_eq!(seen.last(), Some(&Some(12345)));
                    }
                }
            }
        }
    }

    #[test]
    fn map_update_with_follows_get_and_put_under_every_ttl_configuration() {
        for update in [UpdateType::OnCreateAndWrite, UpdateType::OnReadAndWrite] {
            for vis in [
                Visibility::NeverReturnExpired,
                Visibility::ReturnExpiredIfNotCleanedUp,
            ] {
                for ttl_on in [false, true] {
                    // Two backends in lockstep: get + put against update_with.
                    let (clock, t) = Clock::manual(0);
                    let mut d = MapStateDescriptor::<u32, u64>::new("m");
                    if ttl_on {
                        d = d.with_ttl(ttl(update, vis));
                    }
                    let mut b1 = backend(clock.clone());
                    let mut b2 = backend(clock);
                    let s1 = MapState::register(&mut b1, &d).unwrap();
                    let s2 = MapState::register(&mut b2, &d).unwrap();
                    let steps = [
                        (0, 1),
                        (10, 2),
                        (50, 1),
                        (200, 1),
                        (210, 2),
                        (400, 2),
                        (401, 1),
                    ];
                    for (step, (now, uk)) in steps.into_iter().enumerate() {
                        t.set(now);
                        let c1 = &mut Ctx { b: &mut b1, k: 1 };
                        let old = s1.get(c1, &uk).unwrap();
                        s1.put(c1, uk, old.unwrap_or(0) * 10 + step as u64).unwrap();
                        let c2 = &mut Ctx { b: &mut b2, k: 1 };
                        let got = s2
                            .update_with(
                                c2,
                                uk,
                                || 0,
                                |v, existed| {
                                    let seen = existed.then_some(*v);
                                    *v = *v * 10 + step as u64;
                                    seen
                                },
                            )
                            .unwrap();
                        assert_eq!(got, old, "{update:?} {vis:?} ttl={ttl_on} at {now}");
                    }
                    for now in [402, 1_000] {
                        t.set(now);
                        let mut e1 = s1.entries(&mut Ctx { b: &mut b1, k: 1 }).unwrap();
                        let mut e2 = s2.entries(&mut Ctx { b: &mut b2, k: 1 }).unwrap();
                        e1.sort();
                        e2.sort();
                        assert_eq!(e1, e2, "{update:?} {vis:?} ttl={ttl_on} at {now}");
                        if !ttl_on && now == 402 {
                            assert_eq!(e1, vec![(1, 236), (2, 145)]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_handle_of_another_type_or_backend_is_refused() {
        let (clock, _t) = Clock::manual(0);
        let mut b1 = backend(clock.clone());
        let mut b2 = backend(clock);
        let v = ValueState::register(&mut b1, &ValueStateDescriptor::<u64>::new("v")).unwrap();
        let l = ListState::register(&mut b2, &ListStateDescriptor::<u64>::new("l")).unwrap();
        let other = ValueState::register(&mut b2, &ValueStateDescriptor::<u32>::new("w")).unwrap();
        let c = &mut Ctx { b: &mut b1, k: 1 };
        v.update(c, 5).unwrap();
        // Same id 0, different state type: refused, never reinterpreted.
        let err = l.add(c, 1).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        // An id this backend does not have.
        let err = other.value(c).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert_eq!(v.value(c).unwrap(), Some(5));
    }

    #[test]
    fn unregistered_restored_state_is_carried_into_the_next_snapshot() {
        let (clock, _t) = Clock::manual(0);
        let mut b = backend(clock.clone());
        let s = ValueState::register(&mut b, &ValueStateDescriptor::<u64>::new("old")).unwrap();
        s.update(&mut Ctx { b: &mut b, k: 1 }, 5).unwrap();
        let (groups, metas) = snapshot_groups(&mut b);
        let mut r = KeyedBackend::<u64>::new(
            "op",
            clock,
            128,
            KeyGroupRange::new(0, 127),
            groups.clone(),
            metas.clone(),
        );
        let (g2, m2) = snapshot_groups(&mut r);
        assert_eq!(g2, groups);
        assert_eq!(m2, metas);
    }
}
