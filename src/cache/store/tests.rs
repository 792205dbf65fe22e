use super::*;
use pingora_cache::storage::Storage;

/// Metadata for a response head `resp`, fresh until now.
pub(crate) fn meta(resp: &pingora_http::ResponseHeader) -> StoredMeta {
    let now = std::time::SystemTime::now();
    let fresh = super::super::freshness::Freshness {
        fresh_until: now,
        updated: now,
        stale_while_revalidate: 0,
        stale_if_error: 0,
    };
    StoredMeta::new(fresh, head::StoredHead::of(resp, &head::Skip::NONE))
}

/// Pingora's cache phases ask for the miss handler once the upstream's answer is here: a
/// purge begun and ended between the fetch's start and then keeps the answer out, by the
/// fetch's count carried in the metadata.
#[tokio::test]
async fn a_fill_through_pingoras_phases_begun_before_a_purge_stores_nothing() {
    let store: &'static TileStore = Box::leak(Box::new(TileStore::new(
        memory::MemoryTier::new(1 << 20),
        None,
    )));
    let mut resp = pingora_http::ResponseHeader::build(200, None).unwrap();
    resp.insert_header("content-length", "3").unwrap();
    let span = pingora_cache::trace::Span::inactive().handle();
    for (tile, purge_during_fetch) in [("a", true), ("b", false)] {
        let key = CacheKey::new("", tile);
        let mut m = meta(&resp).to_meta().unwrap();
        m.extensions_mut().insert(Begun(store.epoch()));
        if purge_during_fetch {
            drop(store.purges.begin());
        }
        let mut miss = store.get_miss_handler(&key, &m, &span).await.unwrap();
        miss.write_body(Bytes::from_static(b"abc"), true)
            .await
            .unwrap();
        let finished = miss.finish().await;
        assert_eq!(finished.is_ok(), !purge_during_fetch, "{tile}");
        let found = store.find(slot(&key)).await;
        assert_eq!(found.is_some(), !purge_during_fetch, "{tile}");
    }
}

/// A revalidated object's metadata keeps when it was first stored apart from when it was
/// revalidated, through Pingora's metadata and a disk file.
#[test]
fn a_revalidated_objects_first_store_and_revalidation_both_survive() {
    let resp = pingora_http::ResponseHeader::build(200, None).unwrap();
    let created = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
    let mut first = meta(&resp).to_meta().unwrap();
    first = CacheMeta::new(first.fresh_until(), created, 0, 0, resp.clone());
    // As Pingora makes a revalidation's: created kept, updated now.
    let (internal, header) = first.serialize().unwrap();
    let mut revalidated = CacheMeta::deserialize(&internal, &header).unwrap();
    revalidated.set_epoch_override(std::time::SystemTime::now());
    let stored = StoredMeta::from_meta(&revalidated);
    assert_eq!(stored.created, created);
    let back = stored.to_meta().unwrap();
    assert_eq!(back.created(), created);
    assert!(back.age().as_secs() < 5, "age from the revalidation");
    let (internal, header) = back.serialize().unwrap();
    let read = StoredMeta::from_meta(&CacheMeta::deserialize(&internal, &header).unwrap());
    assert_eq!((read.created, read.updated), (created, stored.updated));
}

/// A fill that found no room in shared memory for its declared length is counted refused
/// once, not again when it is stored.
#[test]
fn a_fill_refused_room_is_counted_once() {
    let store: &'static TileStore = Box::leak(Box::new(TileStore::new(
        memory::MemoryTier::new(1 << 20),
        None,
    )));
    let body = vec![7u8; 16 * 1024];
    let mut held = Vec::new();
    while let Some(b) = store.memory.hold(&body) {
        held.push(b);
    }
    let refused = || store.memory.shared().expect("shared memory").refused;
    let before = refused();
    let mut resp = pingora_http::ResponseHeader::build(200, None).unwrap();
    resp.insert_header("content-length", body.len().to_string())
        .unwrap();
    let mut filling = store.filling([8; 16], meta(&resp), store.epoch());
    filling.append(&body);
    let stored = filling.store().expect("stored in ordinary memory");
    assert_eq!(&stored.body[..], &body[..]);
    assert_eq!(refused(), before + 1);
}

/// A body longer than the place its declared length took moves to ordinary memory whole.
#[test]
fn a_body_past_its_place_in_shared_memory_moves_whole() {
    let store: &'static TileStore = Box::leak(Box::new(TileStore::new(
        memory::MemoryTier::new(1 << 20),
        None,
    )));
    let mut resp = pingora_http::ResponseHeader::build(200, None).unwrap();
    resp.insert_header("content-length", shared::MIN_BODY.to_string())
        .unwrap();
    let mut filling = store.filling([7; 16], meta(&resp), store.epoch());
    assert!(
        matches!(filling.body, FillBody::Shared(_)),
        "a place of 8 KiB"
    );
    let data: Vec<u8> = (0..30_000u32).map(|i| (i % 253) as u8).collect();
    for piece in data.chunks(5000) {
        filling.append(piece);
    }
    match &filling.body {
        FillBody::Heap(b) => assert!(b[..] == data[..]),
        FillBody::Shared(_) => panic!("30000 bytes in an 8 KiB place"),
    }
}

#[test]
fn a_content_length_is_digits_only_within_usize() {
    let length = |v: &str| {
        let mut resp = pingora_http::ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-length", v).unwrap();
        content_length(&resp)
    };
    assert_eq!(length("20480"), Some(20480));
    assert_eq!(length(" 5\t"), Some(5));
    assert_eq!(length("0"), Some(0));
    assert_eq!(length(&usize::MAX.to_string()), Some(usize::MAX));
    assert_eq!(length(&format!("{}0", usize::MAX)), None);
    for v in ["", "+5", "-5", "5a", "5 5", "0x10", "٥"] {
        assert_eq!(length(v), None, "{v:?}");
    }
    let none = pingora_http::ResponseHeader::build(200, None).unwrap();
    assert_eq!(content_length(&none), None);
}

/// The fills under way hold at most `filling_max` bytes in ordinary memory together: the fill
/// that would go past it collects nothing more and is not stored, and is counted; the others
/// are stored; what each held is given back when it is stored or dropped.
#[test]
fn fills_under_way_hold_at_most_their_share_of_ordinary_memory() {
    let mut store = TileStore::new(memory::MemoryTier::new(1 << 20), None);
    store.filling_max = 250_000;
    let store: &'static TileStore = Box::leak(Box::new(store));
    // Bodies of unknown length (chunked): collected on the heap.
    let resp = pingora_http::ResponseHeader::build(200, None).unwrap();
    let chunk = vec![b't'; 10_000];
    let mut fills: Vec<Filling> = (0..3u8)
        .map(|i| store.filling([i; 16], meta(&resp), store.epoch()))
        .collect();
    // 100,000 bytes each, one after the other: the third goes past 250,000.
    for f in &mut fills {
        for _ in 0..10 {
            f.append(&chunk);
        }
    }
    let used = store
        .filling_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(used <= 250_000, "{used} bytes held");
    let stored: Vec<bool> = fills.iter_mut().map(|f| f.store().is_ok()).collect();
    assert_eq!(stored, [true, true, false]);
    assert_eq!(store.fills_over(), 1);
    drop(fills);
    let used = store
        .filling_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(used, 0);
    // With room again, a fill is stored.
    let mut f = store.filling([9; 16], meta(&resp), store.epoch());
    for _ in 0..10 {
        f.append(&chunk);
    }
    assert!(f.store().is_ok());
}
