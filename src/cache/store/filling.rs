//! A response body collected to be stored: in the memory tier's shared memory when it is kept
//! there, else in ordinary memory; stored whole or not at all.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_cache::key::HashBinary;
use pingora_cache::storage::{HandleMiss, MissFinishType};
use pingora_core::{Error, ErrorType, Result};

use super::head::StoredHead;
use super::{shared, Object, StoredMeta, TileStore};

/// Collecting a response body to store. A fill is stored only when the upstream's body ended
/// as its framing says (a fill that failed is dropped), and a body whose length disagrees with
/// its `Content-Length` is not stored either.
pub struct Filling {
    pub(super) store: &'static TileStore,
    pub(super) key: HashBinary,
    pub(super) meta: Option<StoredMeta>,
    pub(super) body: FillBody,
    /// [`TileStore::epoch`] when the fetch began.
    pub(super) seen: super::Seen,
    /// Shared memory had no room for the declared length (or does not keep a body of it): not
    /// asked again when the body is stored (a refusal is counted once).
    pub(super) room_refused: bool,
    /// The bytes of the body in ordinary memory counted in [`TileStore::filling_bytes`].
    pub(super) held: usize,
    /// The fills under way held the most they may: this one collects nothing more and is not
    /// stored.
    pub(super) over: bool,
}

/// A body being collected: in the memory tier's shared memory when its declared length is one
/// kept there (written past the processor's caches), else in ordinary memory.
pub enum FillBody {
    Heap(BytesMut),
    Shared(shared::Writing),
}

impl FillBody {
    pub fn len(&self) -> usize {
        match self {
            FillBody::Heap(b) => b.len(),
            FillBody::Shared(w) => w.len(),
        }
    }

    /// The bytes held in ordinary memory.
    fn on_heap(&self) -> usize {
        match self {
            FillBody::Heap(b) => b.len(),
            FillBody::Shared(_) => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Room for `more` bytes (a body longer than its place in shared memory moves to ordinary
    /// memory).
    fn reserve(&mut self, more: usize) {
        if let FillBody::Shared(w) = self {
            if w.room() >= more {
                return;
            }
            let mut heap = BytesMut::with_capacity(w.len() + more);
            heap.extend_from_slice(w.as_slice());
            *self = FillBody::Heap(heap);
        }
        if let FillBody::Heap(b) = self {
            b.reserve(more);
        }
    }
}

impl Filling {
    /// Adds `data` to the body. The bodies of the fills under way held in ordinary memory
    /// (those the shared memory has no place for) are [`TileStore::filling_max`] bytes at
    /// most together: a fill that would go past it lets its body go and is not stored (its
    /// client gets the whole answer all the same). Before, each client that read slowly held
    /// its fill's body so far: a hundred of them, each asking for a different 8 MB tile, grew
    /// the gateway by 300 MB past a 64 MiB budget.
    pub fn append(&mut self, data: &[u8]) {
        if self.over {
            return;
        }
        self.body.reserve(data.len());
        match &mut self.body {
            FillBody::Shared(w) => w.write_past_caches(data),
            FillBody::Heap(b) => b.extend_from_slice(data),
        }
        let more = self.body.on_heap().saturating_sub(self.held);
        if more == 0 {
            return;
        }
        use std::sync::atomic::Ordering::Relaxed;
        let total = self.store.filling_bytes.fetch_add(more, Relaxed) + more;
        self.held += more;
        if total > self.store.filling_max {
            self.over = true;
            self.let_go();
            self.body = FillBody::Heap(BytesMut::new());
            self.store.fills_over.fetch_add(1, Relaxed);
            log::debug!(
                "tile cache: a fill not stored: the fills under way hold {} bytes",
                self.store.filling_max
            );
        }
    }

    /// Takes the body's bytes out of [`TileStore::filling_bytes`].
    fn let_go(&mut self) {
        let held = std::mem::take(&mut self.held);
        self.store
            .filling_bytes
            .fetch_sub(held, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the fills under way held the most they may as this one went on: it is not
    /// stored.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// The body collected so far, in bytes.
    pub fn size(&self) -> usize {
        self.body.len()
    }

    /// The head being stored.
    pub fn head(&self) -> Option<&StoredHead> {
        self.meta.as_ref().map(|m| &m.head)
    }

    /// Stores the complete response; the stored object.
    pub fn store(&mut self) -> Result<Arc<Object>> {
        let Some(meta) = self.meta.take() else {
            return Error::e_explain(ErrorType::InternalError, "fill finished twice");
        };
        // (Counted no longer: stored, the body is the memory tier's; else dropped.)
        self.let_go();
        if self.over {
            return Error::e_explain(
                ErrorType::InternalError,
                "the fills under way held the most memory they may: not stored",
            );
        }
        let declared = meta.head.content_length();
        let size = self.body.len();
        if declared.is_some_and(|d| d != size) && meta.head.status() != 304 {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("truncated body ({size} of {declared:?} bytes): not stored"),
            );
        }
        // A body that came in chunks (or until the upstream closed) is stored with its length:
        // every client can read a hit of it, HTTP/1.0 ones too, and the fast path answers it.
        let meta = match declared {
            None if !matches!(meta.head.status().as_u16(), 100..=199 | 204 | 304) => {
                meta.with_length(size)?
            }
            _ => meta,
        };
        let body = match std::mem::replace(&mut self.body, FillBody::Heap(BytesMut::new())) {
            FillBody::Shared(w) if w.len() >= shared::MIN_BODY => w.done(),
            FillBody::Shared(w) => Bytes::copy_from_slice(w.as_slice()),
            FillBody::Heap(body) => match (!self.room_refused)
                .then(|| self.store.memory.hold(&body))
                .flatten()
            {
                Some(shared) => shared,
                // Keep no spare room: a chunked body grew by doubling.
                None if body.capacity() > size + size / 8 + 64 => Bytes::copy_from_slice(&body),
                None => body.freeze(),
            },
        };
        let obj = Arc::new(Object::new(self.key, meta, body));
        if !self.store.keep_in_memory(obj.clone(), self.seen) {
            return Error::e_explain(
                ErrorType::InternalError,
                "purged while it was fetched: not stored",
            );
        }
        if let Some(d) = &self.store.disk {
            d.put(obj.clone(), self.seen);
        }
        Ok(obj)
    }
}

impl Drop for Filling {
    fn drop(&mut self) {
        self.let_go();
    }
}

#[async_trait]
impl HandleMiss for Filling {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.append(&data);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        self.store().map(|o| MissFinishType::Created(o.body.len()))
    }
}
