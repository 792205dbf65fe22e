//! The series of Kargo's `eg` counter a request counts in, remembered per worker thread: a
//! tile's request finds its series without the counter family's lock and label hashing, which
//! every thread would otherwise take on every request. Series are never removed from the
//! family, so a remembered one stays the one scraped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;

use prometheus::{IntCounter, IntCounterVec};

/// Series remembered per thread at most (then it starts afresh).
const REMEMBERED: usize = 4096;

struct Series {
    status: u16,
    consumer: Box<str>,
    endpoint: Box<str>,
    counter: IntCounter,
}

thread_local! {
    static SERIES: RefCell<HashMap<u64, Series, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
}

/// Counts one request in the series of (`status`, `consumer`, `endpoint`) in `family`.
pub fn inc(family: &IntCounterVec, status: u16, consumer: &str, endpoint: &str) {
    let id = foldhash::fast::FixedState::with_seed(0xe6).hash_one((status, consumer, endpoint));
    SERIES.with_borrow_mut(|known| {
        if let Some(s) = known.get(&id) {
            if s.status == status && &*s.consumer == consumer && &*s.endpoint == endpoint {
                return s.counter.inc();
            }
        }
        let kind = if (200..300).contains(&status) {
            "SUCCESS"
        } else {
            "FAILED"
        };
        let code = status.to_string();
        let counter = family.with_label_values(&[kind, code.as_str(), consumer, endpoint]);
        counter.inc();
        if known.len() >= REMEMBERED {
            known.clear();
        }
        known.insert(
            id,
            Series {
                status,
                consumer: consumer.into(),
                endpoint: endpoint.into(),
                counter,
            },
        );
    });
}
