//! The entries of one keyed state table in one key group, as a state file
//! holds them: (encoded key, encoded value) pairs.
//!
//! They used to be a `Vec<(ByteBuf, ByteBuf)>`: two heap allocations per
//! entry, made while a restore decodes a file and freed again as soon as each
//! task has decoded the entries into its typed tables, and made once more for
//! every entry a checkpoint encodes. For a restore of 1 GiB of 1 KiB entries
//! that is two million allocations and frees on top of the bytes themselves
//! (docs/benchmarks.md, issue 4). Here the bytes of many entries share one
//! chunk of [`CHUNK`] bytes and each entry is a 16-byte span into it.
//!
//! The persisted encoding is unchanged: an `Entries` serializes exactly as the
//! `Vec<(ByteBuf, ByteBuf)>` it replaces (a length, then each key and value
//! as a byte string), and a unit test holds the two encodings equal.

use std::fmt;

use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::Bytes;

/// Bytes per chunk. Large enough that allocations per entry vanish for small
/// and medium entries; a chunk is only ever written up to its capacity, so
/// the unused tail of the last one costs address space, not memory.
const CHUNK: usize = 1 << 20;

/// The first shared chunk; each next one doubles up to [`CHUNK`], so that
/// the many small tables of a snapshot (one per state and key group) do not
/// each reserve a whole chunk.
const FIRST_CHUNK: usize = 4096;

/// An entry at least this large gets a chunk of its own, so that large
/// entries do not leave most of a shared chunk empty.
const OWN_CHUNK: usize = CHUNK / 4;

/// Most spans reserved up front from a length prefix: a corrupt length must
/// not make a restore allocate absurd amounts before the bytes run out.
const MAX_RESERVE: usize = 1 << 16;

#[derive(Clone, Copy, Debug)]
struct Span {
    chunk: u32,
    start: u32,
    key_len: u32,
    value_len: u32,
}

/// Encoded (key, value) pairs, packed into shared chunks.
#[derive(Clone, Default)]
pub struct Entries {
    chunks: Vec<Vec<u8>>,
    spans: Vec<Span>,
    /// The shared chunk being filled (entries with a chunk of their own are
    /// pushed after it); `None` before the first.
    current: Option<usize>,
    /// Capacity of the last shared chunk.
    last_cap: usize,
    /// Set between [`Entries::start_entry`] and [`Entries::finish_entry`]:
    /// where the key of the entry being decoded starts.
    pending_key: Option<(usize, usize)>,
}

impl Entries {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Key and value bytes of every entry together.
    pub fn bytes(&self) -> u64 {
        self.spans
            .iter()
            .map(|s| u64::from(s.key_len) + u64::from(s.value_len))
            .sum()
    }

    pub fn get(&self, i: usize) -> Option<(&[u8], &[u8])> {
        let s = self.spans.get(i)?;
        let chunk = self.chunks.get(s.chunk as usize)?;
        let start = s.start as usize;
        let mid = start + s.key_len as usize;
        let end = mid + s.value_len as usize;
        Some((chunk.get(start..mid)?, chunk.get(mid..end)?))
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter {
            entries: self,
            next: 0,
        }
    }

    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), EntryTooLarge> {
        let n = key.len() + value.len();
        if u32::try_from(n).is_err() {
            return Err(EntryTooLarge(n as u64));
        }
        let (chunk, start) = self.room(n);
        let c = &mut self.chunks[chunk];
        c.extend_from_slice(key);
        c.extend_from_slice(value);
        self.record(chunk, start, key.len(), value.len());
        Ok(())
    }

    /// Moves every entry of `other` to the end of `self`.
    pub fn append(&mut self, other: Entries) {
        let base = self.chunks.len() as u32;
        self.spans.extend(other.spans.into_iter().map(|s| Span {
            chunk: s.chunk + base,
            ..s
        }));
        self.chunks.extend(other.chunks);
        // Further pushes start a fresh chunk rather than fill a moved one.
        self.current = None;
        self.last_cap = 0;
    }

    /// Chunk and offset where `n` more bytes fit, in a new chunk if needed.
    fn room(&mut self, n: usize) -> (usize, usize) {
        if n >= OWN_CHUNK {
            self.chunks.push(Vec::with_capacity(n));
            return (self.chunks.len() - 1, 0);
        }
        if let Some(c) = self.current {
            let chunk = &self.chunks[c];
            if chunk.capacity() - chunk.len() >= n {
                return (c, chunk.len());
            }
        }
        let cap = (self.last_cap * 2).clamp(FIRST_CHUNK, CHUNK).max(n);
        self.last_cap = cap;
        self.chunks.push(Vec::with_capacity(cap));
        let c = self.chunks.len() - 1;
        self.current = Some(c);
        (c, 0)
    }

    fn record(&mut self, chunk: usize, start: usize, key_len: usize, value_len: usize) {
        // Lossless: an entry is at most 4 GiB (checked before it is
        // written), shared chunks are 1 MiB, and an entry with a chunk of its
        // own starts at 0. Chunk indexes beyond u32 would need 4 PiB.
        self.spans.push(Span {
            chunk: chunk as u32,
            start: start as u32,
            key_len: key_len as u32,
            value_len: value_len as u32,
        });
    }

    /// Decoding: the key of the next entry (its value follows).
    fn start_entry(&mut self, key: &[u8]) -> Result<(), EntryTooLarge> {
        if u32::try_from(key.len()).is_err() {
            return Err(EntryTooLarge(key.len() as u64));
        }
        let (chunk, start) = self.room(key.len());
        self.chunks[chunk].extend_from_slice(key);
        self.pending_key = Some((chunk, start));
        Ok(())
    }

    /// Decoding: the value of the entry whose key came last. If it does not
    /// fit after the key, the key moves to where both fit.
    fn finish_entry(&mut self, value: &[u8]) -> Result<(), EntryTooLarge> {
        let Some((chunk, start)) = self.pending_key.take() else {
            // The pair visitor always starts an entry first.
            return Ok(());
        };
        let key_len = self.chunks[chunk].len() - start;
        let c = &self.chunks[chunk];
        let fits = c.capacity() - c.len() >= value.len();
        if fits && key_len + value.len() < OWN_CHUNK {
            self.chunks[chunk].extend_from_slice(value);
            self.record(chunk, start, key_len, value.len());
            return Ok(());
        }
        let key = self.chunks[chunk][start..].to_vec();
        self.chunks[chunk].truncate(start);
        // A key that had a chunk of its own leaves it empty: drop it.
        if start == 0 && Some(chunk) != self.current && chunk + 1 == self.chunks.len() {
            self.chunks.pop();
        }
        self.push(&key, value)
    }
}

/// A single entry of 4 GiB or more: the in-memory spans (and no sane state)
/// do not go that far.
#[derive(Debug, thiserror::Error)]
#[error("a keyed state entry of {0} bytes is larger than the 4 GiB an entry can be")]
pub struct EntryTooLarge(pub u64);

impl Entries {}

impl fmt::Debug for Entries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Equal when they hold the same entries in the same order, however the
/// bytes are laid out in chunks.
impl PartialEq for Entries {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

/// For tests: entries over 4 GiB panic here.
#[cfg(test)]
impl<K: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(K, V)> for Entries {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut e = Entries::new();
        for (k, v) in iter {
            e.push(k.as_ref(), v.as_ref()).expect("entry under 4 GiB");
        }
        e
    }
}

pub struct Iter<'a> {
    entries: &'a Entries,
    next: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let e = self.entries.get(self.next)?;
        self.next += 1;
        Some(e)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.entries.len().saturating_sub(self.next);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Entries {
    type Item = (&'a [u8], &'a [u8]);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl Serialize for Entries {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut seq = ser.serialize_seq(Some(self.len()))?;
        for (k, v) in self {
            seq.serialize_element(&(Bytes::new(k), Bytes::new(v)))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_seq(EntriesVisitor)
    }
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of (key bytes, value bytes) pairs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entries, A::Error> {
        let mut e = Entries::new();
        e.spans
            .reserve(seq.size_hint().unwrap_or(0).min(MAX_RESERVE));
        while seq.next_element_seed(PairSeed(&mut e))?.is_some() {}
        Ok(e)
    }
}

/// One (key, value) pair, decoded straight into the chunks.
struct PairSeed<'a>(&'a mut Entries);

impl<'de> DeserializeSeed<'de> for PairSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_tuple(2, self)
    }
}

impl<'de> Visitor<'de> for PairSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a (key bytes, value bytes) pair")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if seq.next_element_seed(Part(self.0, true))?.is_none() {
            return Err(A::Error::invalid_length(0, &"a key and a value"));
        }
        if seq.next_element_seed(Part(self.0, false))?.is_none() {
            return Err(A::Error::invalid_length(1, &"a key and a value"));
        }
        Ok(())
    }
}

/// The key (`true`) or the value of a pair.
struct Part<'a>(&'a mut Entries, bool);

impl<'de> DeserializeSeed<'de> for Part<'_> {
    type Value = ();

    /// `byte_buf`, not `bytes`: a streaming postcard input hands the bytes
    /// over as a transient slice only for an owned byte string (it cannot
    /// lend them for `'de`); they are copied into the chunk either way.
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_byte_buf(self)
    }
}

impl Part<'_> {
    fn take<E: serde::de::Error>(self, bytes: &[u8]) -> Result<(), E> {
        if self.1 {
            self.0.start_entry(bytes)
        } else {
            self.0.finish_entry(bytes)
        }
        .map_err(E::custom)
    }
}

impl<'de> Visitor<'de> for Part<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<(), E> {
        self.take(v)
    }

    /// Formats without a byte-string type (JSON) write one as a sequence of
    /// numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_RESERVE));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        self.take(&v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_bytes::ByteBuf;

    fn pairs(sizes: &[(usize, usize)]) -> Vec<(ByteBuf, ByteBuf)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &(k, v))| {
                (
                    ByteBuf::from(vec![i as u8; k]),
                    ByteBuf::from((0..v).map(|j| (i + j) as u8).collect::<Vec<_>>()),
                )
            })
            .collect()
    }

    /// Sizes that fill chunks exactly, overflow them by one, get chunks of
    /// their own, and are empty.
    fn awkward_sizes() -> Vec<(usize, usize)> {
        let mut s = vec![(0, 0), (16, 0), (0, 16), (8, 1000)];
        s.extend((0..2000).map(|i| (16, 1008 + i % 3)));
        s.push((10, CHUNK - 10));
        s.push((3, OWN_CHUNK - 4));
        s.push((3, OWN_CHUNK - 3));
        s.push((OWN_CHUNK, 0));
        s.push((0, 3 * CHUNK + 1));
        s.extend((0..3000).map(|i| (16, i % 600)));
        s
    }

    #[test]
    fn encodes_exactly_as_the_pairs_it_replaces() {
        let p = pairs(&awkward_sizes());
        let e: Entries = p.iter().map(|(k, v)| (k, v)).collect();
        assert_eq!(e.len(), p.len());
        let as_pairs = postcard::to_allocvec(&p).unwrap();
        assert_eq!(postcard::to_allocvec(&e).unwrap(), as_pairs);
        let back: Entries = postcard::from_bytes(&as_pairs).unwrap();
        assert_eq!(back, e);
        for (i, (k, v)) in back.iter().enumerate() {
            assert_eq!((k, v), (&p[i].0[..], &p[i].1[..]), "entry {i}");
        }
        assert_eq!(
            back.bytes(),
            p.iter()
                .map(|(k, v)| (k.len() + v.len()) as u64)
                .sum::<u64>()
        );
        // And through a self-describing format without byte strings.
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Entries>(&json).unwrap(), e);
    }

    #[test]
    fn append_keeps_order_and_later_pushes() {
        let p = pairs(&awkward_sizes());
        let (a, b) = p.split_at(1500);
        let mut e: Entries = a.iter().map(|(k, v)| (k, v)).collect();
        e.append(b.iter().map(|(k, v)| (k, v)).collect());
        e.push(b"k", b"v").unwrap();
        let mut want: Entries = p.iter().map(|(k, v)| (k, v)).collect();
        want.push(b"k", b"v").unwrap();
        assert_eq!(e, want);
        assert_eq!(e.get(e.len() - 1), Some((&b"k"[..], &b"v"[..])));
        assert_eq!(e.get(e.len()), None);
    }

    #[test]
    fn small_entries_share_chunks() {
        let e: Entries = (0..10_000u32)
            .map(|i| (i.to_le_bytes(), [1u8; 100]))
            .collect();
        // 1.04 MB of entries: eight chunks (4 KiB doubling to 512 KiB), not
        // twenty thousand allocations.
        assert_eq!(e.chunks.len(), 8);
        let one: Entries = [(b"k", b"v")].into_iter().collect();
        assert_eq!(one.chunks[0].capacity(), FIRST_CHUNK);
    }

    #[test]
    fn truncated_or_malformed_input_is_an_error() {
        let p = pairs(&[(4, 10), (4, 10)]);
        let bytes = postcard::to_allocvec(&p).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                postcard::from_bytes::<Entries>(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        // A huge count with no entries behind it fails without reserving it.
        assert!(postcard::from_bytes::<Entries>(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }
}
