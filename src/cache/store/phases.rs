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
        meta.extensions_mut().insert(super::Found(obj.serial));
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
            Some(d) => d.remove(&k).await,
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
        if found.is_some_and(|f| f.0 != old.serial) {
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

/// Reading a stored body: all of it at once (it is in memory), or the range asked for.
struct Hit {
    body: Bytes,
    range: (usize, usize),
    done: bool,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.range.0..self.range.1)))
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
