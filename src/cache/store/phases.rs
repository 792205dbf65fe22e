//! The tile store as Pingora's cache phases use it: lookups, fills, metadata updates and purges
//! through its `Storage` trait, a stored body read whole or in a range.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::CacheHashKey;
use pingora_cache::storage::{
    HandleHit, HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_core::{Error, ErrorType, Result};

use super::{slot, Object, StoredMeta, TileStore};

#[async_trait]
impl Storage for TileStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(obj) = self.find(slot(key)).await else {
            return Ok(None);
        };
        let mut meta = obj.meta.to_meta()?;
        meta.extensions_mut().insert(obj.found());
        let hit = Hit {
            body: obj.body.clone(),
            range: (0, obj.body.len()),
            done: false,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        // Pingora asks once the upstream's answer is here: a purge since the request's fetch
        // began (even one begun and ended since `cacheable` looked) keeps it out.
        Ok(Box::new(self.filling(
            slot(key),
            StoredMeta::from_meta(meta),
            self.begun(meta),
        )))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let k = target.key().combined_bin();
        // Begun first: what is being fetched, read or revalidated now, or begins before the
        // purge ends, is not kept.
        let _under_way = self.purges.begin();
        let in_memory = self.memory.remove(&k);
        let on_disk = match &self.disk {
            Some(d) => d.remove(&k).await.map_err(|e| {
                Error::because(ErrorType::InternalError, "the tile's file stays on disk", e)
            })?,
            None => false,
        };
        Ok(if in_memory || on_disk {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let k = slot(key);
        let seen = self.begun(meta);
        let Some(old) = self.find(k).await else {
            return Ok(false);
        };
        // Another object than the one revalidated: its head is not the one updated.
        let found = meta.extensions().get::<super::Found>();
        if found.is_some_and(|f| *f != old.found()) {
            return Ok(false);
        }
        let obj = Arc::new(Object::new(
            k,
            StoredMeta::from_meta(meta),
            old.body.clone(),
        ));
        if !self.keep_in_memory(obj.clone(), seen) {
            return Ok(false);
        }
        if let Some(d) = &self.disk {
            d.put(obj, seen);
        }
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// The most of a stored body handed to the session at once: an HTTP/2 session bounds each
/// write by the send timeout, which must bound a pause of a slow client, not its whole tile.
const HIT_PIECE: usize = 64 * 1024;

/// Reading a stored body (or the range asked for), from memory, in pieces of [`HIT_PIECE`].
struct Hit {
    body: Bytes,
    range: (usize, usize),
    done: bool,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        let (start, end) = self.range;
        if self.done {
            return Ok(None);
        }
        let piece_end = end.min(start + HIT_PIECE);
        self.range.0 = piece_end;
        self.done = piece_end == end;
        Ok(Some(self.body.slice(start..piece_end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        let end = end.map_or(len, |e| e.min(len));
        if start > end {
            return Error::e_explain(ErrorType::InternalError, "seek past the end of the body");
        }
        self.range = (start, end);
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored body goes to the session in pieces of at most [`HIT_PIECE`], whole, and a
    /// range in the same way.
    #[tokio::test]
    async fn a_hit_is_read_in_pieces() {
        let body: Bytes = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let mut hit = Hit {
            body: body.clone(),
            range: (0, body.len()),
            done: false,
        };
        let mut pieces = Vec::new();
        while let Some(p) = hit.read_body().await.unwrap() {
            pieces.push(p);
        }
        let lens: Vec<usize> = pieces.iter().map(Bytes::len).collect();
        assert_eq!(lens, [HIT_PIECE, HIT_PIECE, 150_000 - 2 * HIT_PIECE]);
        assert_eq!(pieces.concat(), body.to_vec());
        hit.seek(10, Some(20)).unwrap();
        assert_eq!(hit.read_body().await.unwrap(), Some(body.slice(10..20)));
        assert_eq!(hit.read_body().await.unwrap(), None);
        let mut empty = Hit {
            body: Bytes::new(),
            range: (0, 0),
            done: false,
        };
        assert_eq!(empty.read_body().await.unwrap(), Some(Bytes::new()));
        assert_eq!(empty.read_body().await.unwrap(), None);
    }
}
