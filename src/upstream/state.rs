//! What tollgate knows about each upstream url while it runs: the active health checks'
//! verdict, passive ejection after consecutive failures, and requests in flight. The state of
//! a url lives in a registry shared by every compiled config, so it survives a config reload.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::settings::Outlier;

/// Milliseconds on a monotonic clock (from the first reading, plus one: 0 is no time): an
/// ejection lasts its `ejectSeconds` whatever the system clock is set to meanwhile.
fn now_ms() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64 + 1
}

#[derive(Debug)]
pub struct TargetState {
    /// The active checks' verdict (healthy until they say otherwise).
    healthy: AtomicBool,
    check_passes: AtomicU32,
    check_failures: AtomicU32,
    /// Passive: left out until this time ([`now_ms`]), after consecutive failures.
    ejected_until: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Requests being sent to it.
    pub in_flight: AtomicUsize,
}

impl Default for TargetState {
    fn default() -> Self {
        TargetState {
            healthy: AtomicBool::new(true),
            check_passes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }
}

/// A change of a url's health worth a log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    None,
    BecameHealthy,
    BecameUnhealthy,
}

impl TargetState {
    /// Whether requests may go to it now. Asked for every request: the clock is read only
    /// while an ejection is on record.
    pub fn available(&self) -> bool {
        if !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if until > now_ms() {
            return false;
        }
        // The ejection is over; unless a new one came meanwhile, it is forgotten.
        let _ = self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        true
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Milliseconds left of an ejection, if it is ejected.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let now = now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Records an active check's result against the thresholds.
    pub fn check_result(&self, passed: bool, healthy_after: u32, unhealthy_after: u32) -> Change {
        if passed {
            self.check_failures.store(0, Ordering::Relaxed);
            let n = self.check_passes.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.healthy() && n >= healthy_after {
                self.healthy.store(true, Ordering::Relaxed);
                // A url back from the checks is given a clean passive record.
                self.consecutive_failures.store(0, Ordering::Relaxed);
                self.ejected_until.store(0, Ordering::Relaxed);
                return Change::BecameHealthy;
            }
        } else {
            self.check_passes.store(0, Ordering::Relaxed);
            let n = self.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if self.healthy() && n >= unhealthy_after {
                self.healthy.store(false, Ordering::Relaxed);
                return Change::BecameUnhealthy;
            }
        }
        Change::None
    }

    /// Forgets the active checks' verdict (its endpoint has no health check now): healthy,
    /// no checks counted. Whether it was unhealthy.
    pub fn checks_off(&self) -> bool {
        self.check_passes.store(0, Ordering::Relaxed);
        self.check_failures.store(0, Ordering::Relaxed);
        !self.healthy.swap(true, Ordering::Relaxed)
    }

    /// Records how a request to it went (connect failure or 5xx = failure); returns true when
    /// this failure ejects it. The failures of requests that were in flight when it was
    /// ejected say nothing new: they neither prolong the ejection nor eject it again.
    pub fn request_result(&self, failed: bool, outlier: Option<&Outlier>) -> bool {
        let Some(o) = outlier else {
            return false;
        };
        if !failed {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            return false;
        }
        let now = now_ms();
        let was = self.ejected_until.load(Ordering::Relaxed);
        if was > now {
            return false;
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= o.consecutive_failures {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            let until = now + o.eject().as_millis() as u64;
            // One ejection of those that cross the threshold at once (an ejection that ran
            // out may be forgotten meanwhile: `available`).
            let mut was = was;
            loop {
                match self.ejected_until.compare_exchange(
                    was,
                    until,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return true,
                    Err(now_there) if now_there > now => return false,
                    Err(now_there) => was = now_there,
                }
            }
        }
        false
    }
}

/// Every url's state, by service endpoint and url.
#[derive(Default)]
pub struct Registry {
    states: Mutex<HashMap<(String, String), Arc<TargetState>>>,
}

impl Registry {
    /// The state of a url of a service endpoint, made on first use.
    pub fn state(&self, service: &str, url: &str) -> Arc<TargetState> {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((service.to_string(), url.to_string()))
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let s = TargetState::default();
        assert!(s.available());
        assert_eq!(s.check_result(false, 2, 3), Change::None);
        assert_eq!(s.check_result(false, 2, 3), Change::None);
        assert_eq!(s.check_result(false, 2, 3), Change::BecameUnhealthy);
        assert!(!s.available());
        assert_eq!(s.check_result(true, 2, 3), Change::None);
        assert_eq!(s.check_result(true, 2, 3), Change::BecameHealthy);
        assert!(s.available());
        // Checks turned off: an unhealthy url is back at once, its count forgotten.
        for _ in 0..3 {
            s.check_result(false, 2, 3);
        }
        assert!(!s.available());
        assert!(s.checks_off());
        assert!(s.available() && !s.checks_off());
        assert_eq!(s.check_result(false, 2, 3), Change::None);
    }

    #[test]
    fn ejection() {
        let s = TargetState::default();
        let o = Outlier {
            consecutive_failures: 2,
            eject_seconds: 60.0,
            ..Outlier::default()
        };
        assert!(!s.request_result(true, Some(&o)));
        assert!(
            !s.request_result(false, Some(&o)),
            "a success resets the count"
        );
        assert!(!s.request_result(true, Some(&o)));
        assert!(s.request_result(true, Some(&o)));
        assert!(!s.available());
        let left = s.ejected_for().expect("ejected");
        // The requests in flight when it was ejected fail too: it is not ejected again (one
        // line in the log per ejection), nor for longer.
        for _ in 0..6 {
            assert!(!s.request_result(true, Some(&o)));
        }
        assert!(s.ejected_for().expect("still ejected") <= left);
        // Nor are they counted towards the next one.
        assert_eq!(s.consecutive_failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_ejection_that_ran_out_is_forgotten() {
        let s = TargetState::default();
        let o = Outlier {
            consecutive_failures: 1,
            eject_seconds: 0.05,
            ..Outlier::default()
        };
        assert!(s.request_result(true, Some(&o)));
        assert!(!s.available());
        std::thread::sleep(Duration::from_millis(80));
        assert!(s.available());
        assert_eq!(s.ejected_until.load(Ordering::Relaxed), 0);
        assert!(s.ejected_for().is_none());
        // Ejected again from scratch.
        assert!(s.request_result(true, Some(&o)));
        assert!(!s.available());
    }
}
