//! Clock readings for the request path that need no more than the kernel's tick: the wall
//! clock in seconds (a token's `exp`, a hit's freshness and `Age`, the `Date` header) and
//! deadlines seconds away (keep-alive). A precise reading (`clock_gettime` in the vDSO) reads
//! the processor's time-stamp counter and scales it; the coarse clocks return the time the
//! kernel stored at its last tick (1–10 ms old) and cost about a quarter as much. A request's
//! own latency (the metrics' histograms, the access log) keeps the precise clock.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The wall clock as of the kernel's last tick.
pub fn wall() -> SystemTime {
    UNIX_EPOCH + read(libc::CLOCK_REALTIME_COARSE)
}

/// Whole seconds since the Unix epoch, as of the kernel's last tick.
pub fn unix_secs() -> u64 {
    read(libc::CLOCK_REALTIME_COARSE).as_secs()
}

/// The monotonic clock as of the kernel's last tick (at most a tick behind [`Instant::now`]),
/// for deadlines whole seconds away.
pub fn soon() -> Instant {
    // `Instant` reads `CLOCK_MONOTONIC`, of which the coarse clock is the value at the last
    // tick: one reading of both, taken together, places every coarse reading as an `Instant`.
    static ANCHOR: OnceLock<(Instant, Duration)> = OnceLock::new();
    let (at, mono) = *ANCHOR.get_or_init(|| (Instant::now(), read(libc::CLOCK_MONOTONIC)));
    let now = read(libc::CLOCK_MONOTONIC_COARSE);
    match now.checked_sub(mono) {
        Some(ahead) => at + ahead,
        None => at.checked_sub(mono - now).unwrap_or(at),
    }
}

/// The monotonic clock as of the kernel's last tick, in milliseconds since its epoch (never 0
/// on a running system).
pub fn coarse_millis() -> u64 {
    read(libc::CLOCK_MONOTONIC_COARSE).as_millis() as u64
}

/// The `Date` header's value for now (RFC 9110's IMF-fixdate), made once a second per thread.
pub fn http_date() -> [u8; 29] {
    thread_local! {
        static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let secs = unix_secs();
    DATE.with(|d| {
        let (made, text) = d.get();
        if made == secs {
            return text;
        }
        let mut text = [0u8; 29];
        let fresh = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
        text.copy_from_slice(&fresh.as_bytes()[..29]);
        d.set((secs, text));
        text
    })
}

/// `clock_gettime` for `clock`, since its epoch.
fn read(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Cannot fail for these clocks, which every Linux since 2.6.32 has.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_wall_clock_is_within_a_tick_of_the_precise_one() {
        let before = SystemTime::now();
        let coarse = wall();
        let after = SystemTime::now();
        // At most a tick behind (HZ is at least 100), never ahead.
        assert!(coarse <= after, "{coarse:?} after {after:?}");
        assert!(before.duration_since(coarse).unwrap_or_default() <= Duration::from_millis(20));
        let secs = unix_secs();
        let precise = after.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(
            secs <= precise && precise - secs <= 1,
            "{secs} against {precise}"
        );
    }

    #[test]
    fn a_coarse_instant_is_within_a_tick_of_the_precise_one() {
        for _ in 0..1000 {
            let before = Instant::now();
            let coarse = soon();
            let after = Instant::now();
            assert!(
                coarse <= after + Duration::from_millis(1),
                "{coarse:?} after {after:?}"
            );
            assert!(before.saturating_duration_since(coarse) <= Duration::from_millis(20));
        }
    }

    #[test]
    fn the_date_is_the_wall_clocks_second_as_imf_fixdate() {
        let date = http_date();
        let text = std::str::from_utf8(&date).unwrap();
        let parsed = httpdate::parse_http_date(text).unwrap();
        let now = SystemTime::now();
        let off = now.duration_since(parsed).unwrap_or_default();
        assert!(off < Duration::from_secs(2), "{text} against {now:?}");
        assert!(
            text.ends_with(" GMT") && text.as_bytes()[3] == b',',
            "{text}"
        );
    }
}
