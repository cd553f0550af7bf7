//! The decoder's input for a state file body that arrives as a stream.
//!
//! Restores used to go through `BufReader` + a hashing reader + a postcard
//! flavor that copied every byte string into a scratch buffer (zeroed first)
//! before serde copied it again into its own allocation, and read each varint
//! byte with `read_exact`. Profiles of restores showed that bookkeeping next to
//! the unavoidable work (one copy into the state's own buffers, the checksums).
//! Here the body is read in large blocks into one buffer, the checksum runs
//! over each block once as it arrives, and byte strings are handed to the
//! decoder straight out of that buffer: one copy per byte string, into the
//! allocation that the restored state keeps.
//!
//! Only one of the two checksums is computed: the whole-file one when
//! `_metadata` records it (it covers the body and the trailer too, so a match
//! proves the trailer right as well), else the body one that the trailer
//! holds. Each is a pass over every byte; a restore profile had the two
//! passes at about a fifth of its decoding CPU.
//!
//! Memory stays bounded: one block buffer, plus a scratch buffer only for a
//! single byte string larger than a block, and that is bounded by the bytes the
//! body can still hold, so a corrupt length cannot make it allocate absurd
//! amounts.

use std::io::{ErrorKind, Read};

use xxhash_rust::xxh64::Xxh64;

/// Block size of reads from the source. Large enough that per-read and
/// per-hash-call costs vanish, small enough to stay in cache between hashing
/// and decoding (1 MiB measured no faster).
pub(crate) const BLOCK: usize = 256 * 1024;

/// The body of a state file (`body_len` bytes of `src`), as a postcard
/// deserializer input.
pub(crate) struct BodyInput<'r> {
    src: &'r mut dyn Read,
    buf: Box<[u8]>,
    /// Unconsumed bytes are `buf[pos..end]`.
    pos: usize,
    end: usize,
    /// Body bytes not yet read from `src`.
    unread: u64,
    /// Hash of the whole file so far (the caller feeds the header first and
    /// the trailer after), or else of the body alone (see the module doc).
    hash: Checked,
    /// Set when `src` ended before the body did (a truncated file), or failed.
    eof: bool,
    /// The first read error, reported as such rather than as corruption.
    error: Option<std::io::Error>,
    /// Only for a byte string that does not fit in one block.
    scratch: Vec<u8>,
}

/// The one checksum a read computes.
pub(crate) enum Checked {
    /// The whole file's, compared with `_metadata` (fed the header first).
    Whole(Xxh64),
    /// The body's, compared with the file's trailer.
    Body(Xxh64),
}

impl Checked {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Checked::Whole(h) | Checked::Body(h) => h.update(bytes),
        }
    }
}

/// What is left once decoding ends (see [`BodyInput::finish`]).
pub(crate) struct BodyEnd {
    /// Body bytes that the decoder did not consume.
    pub(crate) unconsumed: u64,
    /// Body bytes the source ended (or failed) before delivering.
    pub(crate) unread: u64,
    /// The checksum that was computed (over the whole file up to the end of
    /// the body, or over the body).
    pub(crate) hash: Checked,
    /// The source's first read error, if it failed rather than ended.
    pub(crate) error: Option<std::io::Error>,
}

impl<'r> BodyInput<'r> {
    pub(crate) fn new(src: &'r mut dyn Read, body_len: u64, hash: Checked) -> Self {
        let block = usize::try_from(body_len).unwrap_or(BLOCK).clamp(1, BLOCK);
        BodyInput {
            src,
            buf: vec![0u8; block].into_boxed_slice(),
            pos: 0,
            end: 0,
            unread: body_len,
            hash,
            eof: false,
            error: None,
            scratch: Vec::new(),
        }
    }

    /// Body bytes the decoder has not consumed yet (buffered or unread).
    fn remaining(&self) -> u64 {
        self.unread + (self.end - self.pos) as u64
    }

    /// Reads more of the body until at least `want` bytes (at most a block)
    /// are buffered. False if the source ended or failed first.
    fn fill(&mut self, want: usize) -> bool {
        debug_assert!(want <= self.buf.len());
        if self.end - self.pos >= want {
            return true;
        }
        if self.end + (want - (self.end - self.pos)) > self.buf.len() {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        while self.end - self.pos < want {
            if self.eof || self.unread == 0 {
                return false;
            }
            let room =
                (self.buf.len() - self.end).min(usize::try_from(self.unread).unwrap_or(usize::MAX));
            match self.src.read(&mut self.buf[self.end..self.end + room]) {
                Ok(0) => {
                    self.eof = true;
                    return false;
                }
                Ok(n) => {
                    // A reader may not claim more than it was given room for.
                    let n = n.min(room);
                    let got = &self.buf[self.end..self.end + n];
                    self.hash.update(got);
                    self.end += n;
                    self.unread -= n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.eof = true;
                    self.error = Some(e);
                    return false;
                }
            }
        }
        true
    }

    /// Runs the rest of the body through the checksums (so that corruption is
    /// reported as such whatever the decoder tripped on) and hands back the
    /// state of the stream.
    pub(crate) fn finish(mut self) -> BodyEnd {
        let unconsumed = self.remaining();
        while !self.eof && self.unread > 0 {
            self.pos = 0;
            self.end = 0;
            self.fill(1);
        }
        BodyEnd {
            unconsumed,
            unread: self.unread,
            hash: self.hash,
            error: self.error,
        }
    }
}

impl<'de, 'r: 'de> postcard::de_flavors::Flavor<'de> for BodyInput<'r> {
    type Remainder = Self;
    type Source = ();

    #[inline]
    fn pop(&mut self) -> postcard::Result<u8> {
        if self.pos == self.end && !self.fill(1) {
            return Err(postcard::Error::DeserializeUnexpectedEnd);
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(b)
    }

    fn size_hint(&self) -> Option<usize> {
        usize::try_from(self.remaining()).ok()
    }

    fn try_take_n(&mut self, _ct: usize) -> postcard::Result<&'de [u8]> {
        // Only borrowed (`&'de`) data needs this; the state types own theirs.
        Err(postcard::Error::DeserializeBadEncoding)
    }

    #[inline]
    fn try_take_n_temp<'a>(&'a mut self, ct: usize) -> postcard::Result<&'a [u8]>
    where
        'de: 'a,
    {
        if ct as u64 > self.remaining() {
            return Err(postcard::Error::DeserializeUnexpectedEnd);
        }
        if ct <= self.buf.len() {
            if !self.fill(ct) {
                return Err(postcard::Error::DeserializeUnexpectedEnd);
            }
            let start = self.pos;
            self.pos += ct;
            return Ok(&self.buf[start..start + ct]);
        }
        // Larger than a block: gather it (bounded by the body, checked above).
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.reserve_exact(ct);
        while scratch.len() < ct {
            if self.pos == self.end && !self.fill(1) {
                self.scratch = scratch;
                return Err(postcard::Error::DeserializeUnexpectedEnd);
            }
            let n = (ct - scratch.len()).min(self.end - self.pos);
            scratch.extend_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
        }
        self.scratch = scratch;
        Ok(&self.scratch)
    }

    fn finalize(self) -> postcard::Result<Self::Remainder> {
        Ok(self)
    }
}
