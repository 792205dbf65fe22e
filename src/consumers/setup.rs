//! Opening the consumer layer a config asks for: the store (`db.redis` with `emulate: false`
//! is Redis; otherwise the embedded store in the data directory), the management service over
//! it, and the cache every authentication reads.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use super::cache::ConsumerCache;
use super::layout::Layout;
use super::models::Models;
use super::service::ConsumerService;
use crate::config::system_file::SystemFile;
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::RedisStore;
use crate::store::Store;

pub struct ConsumerLayer {
    pub store: Arc<dyn Store>,
    pub service: Arc<ConsumerService>,
    pub cache: Arc<ConsumerCache>,
}

impl ConsumerLayer {
    /// `handover`: wait up to this long for another process to let go of an embedded store (a
    /// binary upgrade).
    pub fn open(
        system: &SystemFile,
        config_dirs: &crate::config::ConfigDirs,
        data_dir: &Path,
        handover: Option<std::time::Duration>,
    ) -> anyhow::Result<ConsumerLayer> {
        let store: Arc<dyn Store> = if system.redis.emulate {
            let opened = match handover {
                Some(wait) => EmbeddedStore::open_waiting(data_dir, wait),
                None => EmbeddedStore::open(data_dir),
            };
            Arc::new(opened.with_context(|| {
                format!("cannot open the embedded store in {}", data_dir.display())
            })?)
        } else {
            Arc::new(RedisStore::new(&system.redis))
        };
        let models = Models::load(config_dirs).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(ConsumerLayer::over(
            store,
            &system.redis.namespace,
            models,
            system.crypto.salt_rounds,
        ))
    }

    /// The layer over a given store (tests, tools).
    pub fn over(
        store: Arc<dyn Store>,
        namespace: &str,
        models: Models,
        salt_rounds: u32,
    ) -> ConsumerLayer {
        let layout = Layout::new(namespace);
        let cache = Arc::new(ConsumerCache::new(store.clone(), layout.clone()));
        let service = Arc::new(
            ConsumerService::new(store.clone(), layout, models, salt_rounds)
                .following(cache.clone()),
        );
        ConsumerLayer {
            store,
            service,
            cache,
        }
    }
}
