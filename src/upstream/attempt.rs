//! One request's attempts at a service endpoint, as the proxy phases drive them: the peer of
//! each attempt, retries on another url when a connection fails or breaks before any response
//! byte (GET and HEAD by default, at most `retries` more), the passive health record of each
//! url (connect failures and 5xx eject after `consecutiveFailures`), requests in flight per url
//! for least-connections, and the total timeout.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};

use crate::pipeline::context::ProxyPlan;

/// How long to wait for an upstream connection when the proxy action sets no timeout.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn no_route(why: &'static str) -> Box<Error> {
    Error::create(
        ErrorType::ConnectNoRoute,
        pingora_core::ErrorSource::Upstream,
        Some(why.into()),
        None,
    )
}

/// The error of an attempt at a url whose name has no address (counted as a `dns` failure).
pub const UNRESOLVED: ErrorType = ErrorType::Custom("the url's name does not resolve");

fn unresolved() -> Box<Error> {
    Error::create(UNRESOLVED, pingora_core::ErrorSource::Upstream, None, None)
}

/// Begins an attempt: the first goes to the url the proxy step chose, a resend to the same url,
/// a retry to another available one. Returns the peer to connect to.
pub fn begin(plan: &mut ProxyPlan, path: &str) -> Result<Box<HttpPeer>> {
    if plan.unresolved {
        return Err(unresolved());
    }
    if plan.unavailable {
        return Err(no_route("no url of the service endpoint is available"));
    }
    if std::mem::take(&mut plan.resend_next) {
        plan.resends += 1;
    } else if plan.attempts > 0 {
        let Some(i) = plan.endpoint.pick(path, plan.tried, true) else {
            return Err(no_route(
                "no other url of the service endpoint is available",
            ));
        };
        if !plan.retarget(i) {
            return Err(unresolved());
        }
    }
    plan.attempts += 1;
    plan.endpoint.states[plan.target]
        .in_flight
        .fetch_add(1, Ordering::Relaxed);
    plan.counted = true;
    let sni = plan.endpoint.targets[plan.target].hostname.clone();
    let mut peer = HttpPeer::new(plan.addr, plan.tls, sni);
    peer.group_key = thread_key();
    peer.options.connection_timeout = Some(plan.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT));
    let mut read = plan.read_timeout;
    if let Some(deadline) = plan.deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            release(plan);
            // The upstream's: counted as its failure, and a stale tile may answer.
            return Err(Error::create(
                ErrorType::ReadTimedout,
                pingora_core::ErrorSource::Upstream,
                Some("the total timeout passed".into()),
                None,
            ));
        }
        read = Some(read.map_or(left, |r| r.min(left)));
        peer.options.connection_timeout = peer.options.connection_timeout.map(|c| c.min(left));
    }
    peer.options.read_timeout = read;
    peer.options.write_timeout = read;
    peer.options.verify_cert = plan.verify_cert;
    peer.options.verify_hostname = plan.verify_cert;
    if plan.endpoint.settings.http2 {
        peer.options.set_http_version(2, 1);
    }
    Ok(Box::new(peer))
}

/// This worker thread's share of the upstream connection pool. Each worker runs its own
/// single-threaded runtime, and a connection's socket is registered with the runtime that
/// opened it: reused from another thread, every read of it would wake two threads instead of
/// none. Keying the pool by thread keeps a connection on its thread.
fn thread_key() -> u64 {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static KEY: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    KEY.with(|k| *k)
}

/// Makes Pingora's connector open a new connection for `peer` (a resend: the pooled one broke,
/// and the next pooled one was opened as long ago): a pool key no connection has. The
/// connection is closed once its exchange is over (kept under that key, it would never be
/// used again). (The fast path's own pool takes a new connection for a resend itself.)
pub fn fresh_connection(peer: &mut HttpPeer) {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1 << 63);
    peer.group_key = NEXT.fetch_add(1, Ordering::Relaxed);
    peer.options.idle_timeout = Some(Duration::ZERO);
}

/// Ends the current attempt, if any (its url no longer has this request in flight): when the
/// url's answer has come in whole, or when the request ends. Ending it twice is ending it once.
pub fn end(plan: &mut Option<ProxyPlan>) {
    if let Some(plan) = plan {
        release(plan);
    }
}

/// Ends the attempt: its url no longer has this request in flight; an answer whose status
/// clears the url's failures clears them now (its body came whole, or the client left).
fn release(plan: &mut ProxyPlan) {
    if std::mem::take(&mut plan.clears_at_end) {
        let ep = &plan.endpoint;
        ep.states[plan.target].request_result(false, ep.settings.outlier_detection.as_ref());
    }
    if std::mem::take(&mut plan.counted) {
        plan.endpoint.states[plan.target]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Records a url's failure; logs its ejection. The last available url is never ejected: it
/// would leave nothing to send requests to.
fn failed(plan: &ProxyPlan) {
    let ep = &plan.endpoint;
    let others = plan.target < 64 && ep.any_available(1 << plan.target);
    let outlier = ep.settings.outlier_detection.as_ref().filter(|_| others);
    if ep.states[plan.target].request_result(true, outlier) {
        log::warn!(
            "upstream {} of service endpoint `{}` ejected for {:?} after consecutive failures",
            ep.targets[plan.target].shown,
            ep.name,
            ep.settings
                .outlier_detection
                .as_ref()
                .map_or(Duration::ZERO, |o| o.eject())
        );
    }
}

/// Whether another attempt may be made for this request: retries left (resends are not
/// retries), a method that may be retried, and another url to go to (an ejected one too, when
/// no other is left: see [`super::ServiceEndpoint::pick`]).
/// (Not once the total timeout passed: the attempt's own failure is then the last word.)
fn may_retry(plan: &ProxyPlan, method: &http::Method) -> bool {
    plan.endpoint.settings.retries_method(method) && may_try_again(plan)
}

/// [`may_retry`] whatever the method.
fn may_try_again(plan: &ProxyPlan) -> bool {
    plan.attempts - plan.resends <= plan.endpoint.settings.retries
        && !overdue(plan)
        && plan.endpoint.any_to_try(plan.tried)
}

/// After a connection to the upstream failed: marks the error for a retry when one is
/// allowed — for the first attempt whatever the method: nothing of the request went upstream
/// (nginx retries any request whose connection failed too); a later one's request may have
/// reached a url before (a resend after a broken pooled connection): its method decides.
pub fn connect_failed(
    plan: &mut ProxyPlan,
    method: &http::Method,
    mut e: Box<Error>,
) -> Box<Error> {
    plan.clears_at_end = false;
    // The gateway's own shortage of descriptors, never the url's failure: the idle upstream
    // connections are closed and the connect is made again to the same url, once per request
    // (as a resend is: the two share it). Not on another url, which needs a descriptor too.
    if out_of_descriptors(&e) {
        crate::fastpath::pool::out_of_descriptors();
        release(plan);
        let again = plan.resends == 0;
        plan.resend_next = again;
        e.set_retry(again);
        return e;
    }
    failed(plan);
    release(plan);
    let retry = if plan.attempts == 1 {
        may_try_again(plan)
    } else {
        may_retry(plan, method)
    };
    e.set_retry(retry);
    if e.retry() {
        retried(plan, &e);
    }
    e
}

/// Whether a failed connect failed for want of a file descriptor (the process's or the
/// system's).
fn out_of_descriptors(e: &Error) -> bool {
    e.root_cause()
        .downcast_ref::<std::io::Error>()
        .is_some_and(crate::fastpath::pool::is_out_of_descriptors)
}

/// A url's failure that another url is asked after: counted and logged as the upstream
/// failure it is (the request's last failure is, with its answer, when the request ends).
fn retried(plan: &ProxyPlan, e: &Error) {
    crate::exchange::count_upstream_failure(e);
    let kind = crate::exchange::upstream_error_label(e);
    log::warn!(
        "upstream failure: service endpoint `{}`, upstream {}, {kind}; tried again",
        plan.endpoint.name,
        plan.upstream_text(),
    );
}

/// Whether a request broken on a pooled connection may be sent again: only idempotent
/// requests, as Pingora does, and once per request (a second broken connection counts as the
/// url's failure).
fn may_resend(plan: &ProxyPlan, method: &http::Method) -> bool {
    method.is_idempotent() && plan.resends == 0
}

/// After the exchange broke: a retry only when nothing of the response arrived yet. On a
/// pooled connection that the upstream had closed meanwhile (a normal event), the request is
/// sent again to the same url, the url's record is not blamed and the retries are left for
/// what may follow (the url may have died: its refusal is then retried on another); otherwise
/// another url is tried. A timeout is never such a close: the url holds the request and is
/// slow, and sending it there again would only double the wait; nor is an answer whose head
/// was malformed or framed ambiguously. (A connection the upstream breaks, however long after
/// it took the request, before any byte of an answer looks the same as one it had closed: it
/// is sent again too, as Go's and Pingora's clients do.) `body_lost`: part of the
/// request's body went upstream and is no longer held whole (Pingora keeps the first 64 KiB
/// for a retry): the request cannot be sent again, whatever its method. A failure on the
/// client's side (Pingora passes those here too) ends the exchange with no blame and no retry.
/// An answer the upstream broke after its head went on (`response_started`: its body cut
/// short, a read that timed out) is the url's failure and is not retried: the client has part
/// of it. The total timeout passing meanwhile is neither the url's failure nor a sign of its
/// health: the body is relayed as the client reads it, and a client that reads slowly makes it
/// late (two slow readers per url ejected every url but the last).
pub fn broke(
    plan: &mut ProxyPlan,
    method: &http::Method,
    response_started: bool,
    reused: bool,
    body_lost: bool,
    mut e: Box<Error>,
) -> Box<Error> {
    let clients_failure = matches!(e.esource(), ErrorSource::Downstream);
    if !clients_failure {
        plan.clears_at_end = false;
    }
    // (Only the upstream's own failures: not one of the gateway's while it relays the answer,
    // and not once the attempt was over, its body in whole.)
    let upstreams = matches!(e.esource(), ErrorSource::Upstream);
    if response_started && upstreams && !overdue(plan) && plan.counted {
        failed(plan);
    }
    release(plan);
    // The client's own failure (it left, its body stopped coming or broke its framing): the
    // url is not to blame, and there is no one to send the request again for.
    if response_started || clients_failure {
        e.set_retry(false);
        return e;
    }
    let timed_out = matches!(
        e.etype(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout
    );
    // An answer came, framed wrong or a service exception: no idle close either.
    let answered = matches!(
        e.etype(),
        ErrorType::InvalidHTTPHeader
            | ErrorType::Custom(crate::cache::exception::SERVICE_EXCEPTION)
    );
    let resend = reused && !timed_out && !answered && may_resend(plan, method);
    if !resend {
        failed(plan);
    }
    if body_lost {
        e.set_retry(false);
    } else if resend {
        plan.resend_next = true;
        e.set_retry(true);
    } else {
        e.set_retry(may_retry(plan, method));
        if e.retry() {
            retried(plan, &e);
        }
    }
    e
}

/// The upstream answered: a status of `outlierDetection.failureStatuses` (502, 503, 504)
/// counts against the url, and so does an OGC service exception (`reported`, see
/// [`crate::cache::exception`]) where it says `serviceExceptions`; another 5xx (a 500 one
/// request drew), a status past 599 and an exception that does not count leave the url's
/// record as it was (neither a failure nor a sign of health); anything else clears it once
/// the attempt ends, unless the body broke first ([`broke`], [`body_broke`]): an upstream
/// that cuts every answer short was never ejected, each head clearing the failure of the
/// body before. (Without `outlierDetection`, there is no record.)
pub fn answered(plan: &mut ProxyPlan, status: u16, reported: bool) {
    // An interim answer (`100`, `103`) is no verdict: the final one follows. (A `101` is final.)
    if (100..200).contains(&status) && status != 101 {
        return;
    }
    plan.clears_at_end = false;
    if reported {
        // Counted in `tollgate_upstream_errors_total` as it was judged; one line, as for
        // every upstream failure (folded while it repeats).
        log::warn!(
            "upstream failure: service endpoint `{}`, upstream {}, service exception (an OGC exception report for a map); relayed, not stored",
            plan.endpoint.name,
            plan.upstream_text(),
        );
    }
    let ep = &plan.endpoint;
    let Some(outlier) = ep.settings.outlier_detection.as_ref() else {
        return;
    };
    let failure =
        outlier.failure_statuses.contains(&status) || (reported && outlier.service_exceptions);
    if failure {
        failed(plan);
    } else if status < 500 && !reported {
        plan.clears_at_end = true;
    }
}

/// The upstream broke its answer's body after the head was relayed (the fast path's): the
/// url's failure; the attempt ends.
pub fn body_broke(plan: &mut Option<ProxyPlan>) {
    if let Some(plan) = plan {
        plan.clears_at_end = false;
        failed(plan);
        release(plan);
    }
}

/// The total timeout passed while the body was relayed: neither the url's failure nor a sign
/// of its health (the client's reading paces the relay, see [`broke`]); the attempt ends.
pub fn body_overdue(plan: &mut Option<ProxyPlan>) {
    if let Some(plan) = plan {
        plan.clears_at_end = false;
        release(plan);
    }
}

/// Whether the total timeout has passed.
pub fn overdue(plan: &ProxyPlan) -> bool {
    plan.deadline.is_some_and(|d| Instant::now() >= d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::context::PathRecipe;
    use crate::upstream::settings::UpstreamSettings;
    use crate::upstream::state::Registry;
    use crate::upstream::{ServiceEndpoint, UpstreamTarget};
    use std::sync::Arc;

    /// A plan for two urls with one retry, its first attempt begun on url 0.
    fn plan() -> ProxyPlan {
        plan_with(None)
    }

    /// [`plan`], with passive health as `outlier` says.
    fn plan_with(outlier: Option<crate::upstream::settings::Outlier>) -> ProxyPlan {
        let targets = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
            .iter()
            .map(|u| Arc::new(UpstreamTarget::parse(u).expect("a url")))
            .collect();
        let settings = UpstreamSettings {
            retries: 1,
            outlier_detection: outlier,
            ..UpstreamSettings::default()
        };
        let endpoint = ServiceEndpoint::new("s", targets, None, settings, &Registry::default());
        let mut plan = ProxyPlan {
            service: "s".into(),
            endpoint: Arc::new(endpoint),
            target: 0,
            tried: 0,
            attempts: 0,
            resends: 0,
            resend_next: false,
            counted: false,
            clears_at_end: false,
            unavailable: false,
            unresolved: false,
            addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            tls: false,
            verify_cert: true,
            host: None,
            path: String::new(),
            path_recipe: PathRecipe {
                url: "/".into(),
                prepend_path: true,
                ignore_path: false,
                neutral: None,
            },
            change_origin: false,
            connect_timeout: None,
            read_timeout: None,
            deadline: None,
            edits_before: 0,
            edits_in_key: 0,
        };
        assert!(plan.retarget(0));
        begin(&mut plan, "/").expect("a first attempt");
        plan
    }

    /// A service exception counts against its url only where the endpoint says
    /// `serviceExceptions`; elsewhere it leaves the url's count of failures as it was (a good
    /// answer clears it).
    #[test]
    fn service_exceptions_count_against_a_url_only_where_the_endpoint_says_so() {
        let outlier = |counted| crate::upstream::settings::Outlier {
            service_exceptions: counted,
            ..two_failures(vec![502, 503, 504])
        };
        let mut p = plan_with(Some(outlier(true)));
        answer(&mut p, 503, false);
        answer(&mut p, 200, true);
        assert!(!p.endpoint.states[0].available(), "a 5xx and a report");
        let mut p = plan_with(Some(outlier(false)));
        answer(&mut p, 503, false);
        answer(&mut p, 200, true);
        assert!(p.endpoint.states[0].available(), "a report is no failure");
        answer(&mut p, 503, false);
        assert!(!p.endpoint.states[0].available(), "nor a sign of health");
        let mut p = plan_with(Some(outlier(false)));
        answer(&mut p, 503, false);
        answer(&mut p, 200, false);
        answer(&mut p, 503, false);
        assert!(
            p.endpoint.states[0].available(),
            "a good answer clears the count"
        );
    }

    /// Only the statuses of `failureStatuses` count against a url (502, 503, 504 by default):
    /// a 500 one request drew, or a status past 599, leaves its record as it was.
    #[test]
    fn only_the_failure_statuses_count_against_a_url() {
        let outlier = two_failures;
        let mut p = plan_with(Some(outlier(vec![502, 503, 504])));
        for status in [500, 501, 599, 600, 999, 500] {
            answer(&mut p, status, false);
        }
        assert!(p.endpoint.states[0].available(), "no failure");
        answer(&mut p, 504, false);
        answer(&mut p, 500, false);
        assert!(p.endpoint.states[0].available(), "one failure so far");
        answer(&mut p, 502, false);
        assert!(
            !p.endpoint.states[0].available(),
            "504 and 502: the 500 between is neither"
        );
        let mut p = plan_with(Some(outlier(vec![500])));
        answer(&mut p, 500, false);
        answer(&mut p, 500, false);
        assert!(!p.endpoint.states[0].available(), "a 500 where it counts");
    }

    /// Passive health that ejects after two failures in a row, of `statuses` among them.
    fn two_failures(statuses: Vec<u16>) -> crate::upstream::settings::Outlier {
        crate::upstream::settings::Outlier {
            consecutive_failures: 2,
            eject_seconds: 60.0,
            service_exceptions: false,
            failure_statuses: statuses,
        }
    }

    /// An answer with `status`, its exchange then over.
    fn answer(p: &mut ProxyPlan, status: u16, reported: bool) {
        answered(p, status, reported);
        release(p);
    }

    /// An upstream that breaks every answer's body after its head is ejected like one that
    /// fails outright: the head does not clear the failure of the body before it (each did,
    /// and such a url was never ejected). A client that leaves is no failure of the url.
    #[test]
    fn answers_whose_bodies_break_count_against_their_url() {
        let outlier = two_failures(vec![502, 503, 504]);
        let get = http::Method::GET;
        let cut = || {
            Error::create(
                ErrorType::ConnectionClosed,
                ErrorSource::Upstream,
                None,
                None,
            )
        };
        let left = || Error::create(ErrorType::WriteError, ErrorSource::Downstream, None, None);
        let mut p = plan_with(Some(outlier.clone()));
        answered(&mut p, 200, false);
        assert!(!broke(&mut p, &get, true, false, false, cut()).retry());
        answered(&mut p, 200, false);
        let mut fast = Some(p);
        body_broke(&mut fast);
        let p = fast.expect("plan");
        assert!(!p.endpoint.states[0].available(), "two bodies cut short");
        let mut p = plan_with(Some(outlier.clone()));
        for _ in 0..3 {
            answered(&mut p, 200, false);
            assert!(!broke(&mut p, &get, true, false, false, left()).retry());
        }
        answer(&mut p, 503, false);
        answered(&mut p, 200, false);
        broke(&mut p, &get, true, false, false, left());
        answer(&mut p, 503, false);
        assert!(
            p.endpoint.states[0].available(),
            "an answer the client left clears the failure before it"
        );
    }

    /// An interim answer (`103 Early Hints`) is no verdict on the url: the final answer's is
    /// (a 103 before a 503 cleared the 503's failure). The total timeout passing while a body
    /// is relayed is none either: the client's reading paces it.
    #[test]
    fn interim_answers_and_a_late_relay_say_nothing_of_the_url() {
        let outlier = two_failures(vec![502, 503, 504]);
        let mut p = plan_with(Some(outlier.clone()));
        for _ in 0..2 {
            answered(&mut p, 103, false);
            answer(&mut p, 503, false);
        }
        assert!(
            !p.endpoint.states[0].available(),
            "two 503s after early hints"
        );
        let get = http::Method::GET;
        let late = || Error::create(ErrorType::ReadTimedout, ErrorSource::Upstream, None, None);
        let mut p = plan_with(Some(outlier.clone()));
        p.deadline = Some(Instant::now());
        for _ in 0..3 {
            p.counted = true;
            answered(&mut p, 200, false);
            assert!(!broke(&mut p, &get, true, false, false, late()).retry());
        }
        assert!(p.endpoint.states[0].available(), "three slow readers");
        answer(&mut p, 503, false);
        p.counted = true;
        answered(&mut p, 200, false);
        let mut fast = Some(p);
        body_overdue(&mut fast);
        let mut p = fast.expect("plan");
        answer(&mut p, 503, false);
        assert!(
            !p.endpoint.states[0].available(),
            "a late relay between two 503s clears neither"
        );
    }

    fn broken() -> Box<Error> {
        Error::new(ErrorType::ConnectionClosed)
    }

    #[test]
    fn a_url_that_died_behind_a_pooled_connection_is_retried_on_another() {
        let get = http::Method::GET;
        let mut p = plan();
        // The pooled connection to url 0 broke: sent again to url 0, not a retry.
        assert!(broke(&mut p, &get, false, true, false, broken()).retry());
        begin(&mut p, "/").expect("a resend");
        assert_eq!((p.target, p.attempts, p.resends), (0, 2, 1));
        // url 0 is gone: its refusal still has the retry, on url 1.
        assert!(connect_failed(&mut p, &get, broken()).retry());
        begin(&mut p, "/").expect("a retry");
        assert_eq!(p.target, 1);
        // And that was the one retry.
        assert!(!connect_failed(&mut p, &get, broken()).retry());
    }

    /// A connect that failed for want of a descriptor is the gateway's shortage: made again
    /// once, to the same url, without blame (an ejection after two failures in a row does not
    /// come) and without taking the retry; a second shortage is not retried on another url.
    #[test]
    fn a_connect_out_of_descriptors_is_made_again_to_the_same_url_without_blame() {
        let get = http::Method::GET;
        let mut p = plan_with(Some(two_failures(vec![502])));
        let emfile = || {
            Error::because(
                ErrorType::ConnectError,
                "connecting",
                std::io::Error::from_raw_os_error(libc::EMFILE),
            )
        };
        assert!(connect_failed(&mut p, &get, emfile()).retry());
        assert_eq!(
            p.endpoint.states[0].in_flight.load(Ordering::Relaxed),
            0,
            "released"
        );
        begin(&mut p, "/").expect("made again");
        assert_eq!((p.target, p.attempts, p.resends), (0, 2, 1));
        assert!(!connect_failed(&mut p, &get, emfile()).retry(), "once");
        assert!(p.endpoint.states[0].available(), "no failure counted");
        // Any other connect failure is the url's, retried on the other url.
        let mut p = plan_with(Some(two_failures(vec![502])));
        assert!(connect_failed(&mut p, &get, broken()).retry());
        begin(&mut p, "/").expect("a retry");
        assert_eq!((p.target, p.resends), (1, 0));
    }

    /// Once the total timeout passed, a failure is not retried, and an attempt that would
    /// begin fails as the upstream's (counted, a stale tile may answer it).
    #[test]
    fn past_the_total_timeout_nothing_is_retried_and_the_failure_is_the_upstreams() {
        let get = http::Method::GET;
        let mut p = plan();
        p.deadline = Some(Instant::now());
        let e = broke(
            &mut p,
            &get,
            false,
            false,
            false,
            Error::new(ErrorType::ReadTimedout),
        );
        assert!(!e.retry());
        let mut p = plan();
        p.deadline = Some(Instant::now());
        let e = begin(&mut p, "/").expect_err("past the deadline");
        assert_eq!(e.esource(), &pingora_core::ErrorSource::Upstream);
        assert_eq!(e.etype(), &ErrorType::ReadTimedout);
    }

    #[test]
    fn a_timeout_on_a_pooled_connection_is_not_resent_to_the_same_url() {
        let get = http::Method::GET;
        for etype in [ErrorType::ReadTimedout, ErrorType::WriteTimedout] {
            let mut p = plan();
            // Another url is there: the timeout counts against url 0 and is retried on url 1.
            assert!(broke(&mut p, &get, false, true, false, Error::new(etype.clone())).retry());
            begin(&mut p, "/").expect("a retry");
            assert_eq!((p.target, p.resends), (1, 0), "{etype:?}");
        }
    }

    #[test]
    fn a_request_is_resent_once_and_never_when_it_has_a_body() {
        let get = http::Method::GET;
        let mut p = plan();
        assert!(broke(&mut p, &get, false, true, false, broken()).retry());
        begin(&mut p, "/").expect("a resend");
        // A second broken pooled connection is the url's failure: the retry goes elsewhere.
        assert!(broke(&mut p, &get, false, true, false, broken()).retry());
        begin(&mut p, "/").expect("a retry");
        assert_eq!(p.target, 1);
        let mut p = plan();
        assert!(!broke(&mut p, &http::Method::POST, false, true, false, broken()).retry());
        let mut p = plan();
        assert!(
            !broke(&mut p, &get, true, true, false, broken()).retry(),
            "never after the response began"
        );
        // A body no longer held whole is never sent again: not resent, not retried.
        for method in [http::Method::PUT, http::Method::GET] {
            let mut p = plan();
            assert!(!broke(&mut p, &method, false, true, true, broken()).retry());
            assert!(!p.resend_next, "{method}");
            let mut p = plan();
            assert!(!broke(&mut p, &method, false, false, true, broken()).retry());
        }
    }
}
