//! What gets stored of a response: never a truncated body or bytes past its length, a body
//! that pauses whole, one whose client left for the next, nothing past the size limit, and a
//! tile from its `minUses`-th miss on; a fill whose client was answered before the body came
//! (a conditional or range request, a HEAD) stored all the same.

use super::*;

#[test]
fn a_truncated_body_is_never_stored() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 60}", &[]);
    for _ in 0..2 {
        let text = support::send_until_close(
            gw.port,
            b"GET /open/truncate/40000 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        );
        assert!(
            !text.contains("x-cache-status: HIT"),
            "a truncated body was cached: {}",
            &text[..text.len().min(300)]
        );
        // A miss is answered once its whole body is in: the client never gets part of a tile.
        assert!(
            text.starts_with("HTTP/1.1 502"),
            "{}",
            &text[..text.len().min(300)]
        );
    }
    assert_eq!(up.served(), 2, "both requests went to the upstream");
}

/// An upstream that sends more than its `Content-Length` (in the same write as the body): the
/// tile is what its length says, stored so, and the connection the extra bytes came on is not
/// used again (the next tiles come whole).
#[test]
fn bytes_past_the_content_length_are_neither_part_of_the_tile_nor_of_the_next() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 60}", &[]);
    let expected: Vec<u8> = (0..20_000u32).map(|j| ((j * 7) % 251) as u8).collect();
    for status in ["MISS", "HIT"] {
        let r = get(gw.port, "GET", "/open/overlong/20000", &[]);
        assert_eq!((r.status, cache_status(&r)), (200, status));
        assert!(r.body == expected, "{status}: {} bytes", r.body.len());
    }
    for n in 0..5 {
        let name = format!("next{n}");
        let r = get(gw.port, "GET", &format!("/open/unique/9000/{name}"), &[]);
        assert_eq!((r.status, r.body.len()), (200, 9000), "tile {n}");
        assert!(r.body.starts_with(name.as_bytes()), "tile {n}");
    }
    assert_eq!(up.served(), 6);
}

#[test]
fn a_body_that_pauses_is_stored_whole_and_one_that_stalls_past_the_read_timeout_is_not() {
    let up = PyUpstream::start("tiles", 5.0);
    let conf = config(&up, "{ttl: 60}").replace(
        "{serviceEndpoint: up}",
        // Well past the pause below on a loaded machine too (with 1.5 s, one CI run of the
        // whole suite answered the pausing tile with a 502; it never did alone).
        "{serviceEndpoint: up, readTimeout: 2500}",
    );
    let dir = ConfigDir::new(&conf);
    let gw = GatewayProcess::start_with(&dir, &[], &[]);
    let expected: Vec<u8> = (0..40_000u32).map(|j| ((j * 7) % 251) as u8).collect();
    // Half the body, a pause shorter than the read timeout, the rest: stored whole.
    let path = "/open/stall/200/bytes/40000";
    let first = get(gw.port, "GET", path, &[]);
    assert_eq!((first.status, cache_status(&first)), (200, "MISS"));
    assert!(
        first.body == expected,
        "the body that paused came back altered"
    );
    let second = get(gw.port, "GET", path, &[]);
    assert_eq!((second.status, cache_status(&second)), (200, "HIT"));
    assert!(
        second.body == expected,
        "the stored body differs from the upstream's"
    );
    // A pause past the read timeout: a 502 (the client gets no part of a tile), nothing stored.
    let stalled = "/open/stall/5000/bytes/40000";
    for _ in 0..2 {
        let started = Instant::now();
        let r = get(gw.port, "GET", stalled, &[]);
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(
            started.elapsed() < Duration::from_millis(4900),
            "answered only after {:?}: the read timeout was not applied",
            started.elapsed()
        );
    }
    assert_eq!(up.served(), 3, "the stalled tile was stored");
}

#[test]
fn a_fill_whose_client_left_is_stored_for_the_next() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 60}", &[]);
    // The client asks for a slow tile and leaves before it comes.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        s.write_all(b"GET /open/slow/400/left.png HTTP/1.1\r\nHost: h\r\n\r\n")
            .expect("send");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The fetch went on for everyone: the next request is a hit, the upstream asked once.
    let stored = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        up.served() == 1 && gw.metric(r#"tollgate_cache_objects{tier="memory"}"#) >= 1.0
    });
    assert!(stored, "{}", gw.log_text());
    let next = get(gw.port, "GET", "/open/slow/400/left.png", &[]);
    assert_eq!((next.status, cache_status(&next)), (200, "HIT"));
    assert_eq!(up.served(), 1);
}

/// A miss of a conditional or range request is answered whole (`200`) and its tile stored:
/// answered `304` or `206`, its client's answer was complete before the upstream's body had
/// come, Pingora stopped reading it, and the tile was fetched and thrown away (its lock left
/// behind: the requests waiting on it went upstream one by one) — after a restart or a purge,
/// for every tile a browser revalidates. Once stored, the same requests get their `304` and
/// `206` from the cache.
#[test]
fn a_miss_answered_before_its_body_came_is_stored_for_the_next() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 60, lockTimeout: 5}", &[]);
    let tag = "%22v1%22";
    for (ask, (name, value), status) in [
        ("conditional", ("If-None-Match", "\"v1\""), 304),
        ("range", ("Range", "bytes=0-1"), 206),
    ] {
        // Half of the body with the head, the rest 600 ms later.
        let path = format!("/open/stall/600/bytes/40000/{ask}?header=ETag:{tag}");
        let served = up.served();
        // Requests for the tile while the first one's fetch is under way wait on it.
        let waiting: Vec<_> = (0..4)
            .map(|_| {
                let (port, path) = (gw.port, path.clone());
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(150));
                    get(port, "GET", &path, &[])
                })
            })
            .collect();
        let first = get(gw.port, "GET", &path, &[(name, value)]);
        assert_eq!(
            (first.status, cache_status(&first), first.body.len()),
            (200, "MISS", 40_000),
            "{ask}: {}",
            first.text()
        );
        for w in waiting {
            let r = w.join().expect("a waiting request");
            assert_eq!(r.status, 200, "{ask}");
            assert_eq!(r.body.len(), 40_000, "{ask}");
        }
        let next = get(gw.port, "GET", &path, &[]);
        assert_eq!(
            (next.status, cache_status(&next), next.body.len()),
            (200, "HIT", 40_000),
            "{ask}: the tile its first miss fetched was not stored\n{}",
            gw.log_text()
        );
        assert_eq!(
            up.served() - served,
            1,
            "{ask}: the tile was fetched more than once"
        );
        let again = get(gw.port, "GET", &path, &[(name, value)]);
        assert_eq!(
            (again.status, cache_status(&again)),
            (status, "HIT"),
            "{ask}"
        );
    }
    // Ranges of the stored tile: a range of no bytes is unsatisfiable (Pingora answered it
    // `206` with `Content-Range: bytes 40000-39999/40000`).
    let path = format!("/open/stall/600/bytes/40000/range?header=ETag:{tag}");
    for (range, status, content_range, len) in [
        ("bytes=-2", 206, "bytes 39998-39999/40000", 2),
        ("bytes=39999-", 206, "bytes 39999-39999/40000", 1),
        ("bytes=-0", 416, "bytes */40000", 0),
        ("bytes=40000-", 416, "bytes */40000", 0),
        // Among others, a range of no bytes is left out (it made a multipart body shorter
        // than its length).
        ("bytes=-0,-0", 416, "bytes */40000", 0),
        ("bytes=-3,-0", 206, "bytes 39997-39999/40000", 3),
    ] {
        let r = get(gw.port, "GET", &path, &[("Range", range)]);
        assert_eq!(
            (r.status, r.header("content-range"), r.body.len()),
            (status, Some(content_range), len),
            "{range}"
        );
    }
    // Under `If-Range`, a range only of the tile its strong tag names: a weak tag is never
    // a match (RFC 9110 §13.1.5), and the tile goes whole.
    for (if_range, status, len) in [
        ("\"v1\"", 206, 2),
        ("\"v0\"", 200, 40_000),
        ("W/\"v1\"", 200, 40_000),
    ] {
        let r = get(
            gw.port,
            "GET",
            &path,
            &[("Range", "bytes=0-1"), ("If-Range", if_range)],
        );
        assert_eq!(
            (r.status, cache_status(&r), r.body.len()),
            (status, "HIT", len),
            "If-Range: {if_range}"
        );
    }
    let weak = format!("/open/bytes/40/weak?header=ETag:W/{tag}");
    assert_eq!(cache_status(&get(gw.port, "GET", &weak, &[])), "MISS");
    let r = get(
        gw.port,
        "GET",
        &weak,
        &[("Range", "bytes=0-1"), ("If-Range", "W/\"v1\"")],
    );
    assert_eq!(
        (
            r.status,
            cache_status(&r),
            r.header("content-range"),
            r.body.len()
        ),
        (200, "HIT", None, 40),
        "a weak tag matched byte for byte"
    );
    // An empty tile goes whole, whatever range is asked (Pingora's range filter subtracted one
    // from its end: a `206` of `bytes 0-18446744073709551615/0`, or a panic).
    let empty = "/open/bytes/0/empty";
    assert_eq!(cache_status(&get(gw.port, "GET", empty, &[])), "MISS");
    for range in ["bytes=-5", "bytes=-5,-3", "bytes=0-", "bytes=-0"] {
        let r = get(gw.port, "GET", empty, &[("Range", range)]);
        assert_eq!(
            (
                r.status,
                cache_status(&r),
                r.header("content-range"),
                r.body.len()
            ),
            (200, "HIT", None, 0),
            "{range}"
        );
    }
    let log = gw.log_text();
    assert!(!log.contains("lock"), "a lock was left behind:\n{log}");
    assert!(gw.error_lines().is_empty(), "{:?}", gw.error_lines());
}

/// A client that leaves while a stored tile is sent from Pingora's cache phases (a range of
/// it) is a normal event: no ERROR line (a client could fill the log with them).
#[test]
fn a_client_leaving_a_range_of_a_stored_tile_is_no_error() {
    use std::io::{Read, Write};
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 60}", &[]);
    let path = "/open/unique/6000000/large";
    assert_eq!(cache_status(&get(gw.port, "GET", path, &[])), "MISS");
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: h\r\nRange: bytes=0-\r\n\r\n").as_bytes(),
        )
        .expect("send");
        let mut some = [0u8; 4096];
        s.read_exact(&mut some).expect("the answer begins");
        assert!(some.starts_with(b"HTTP/1.1 206"));
        // Gone with the rest unread: a reset.
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(gw.port, "GET", path, &[]).status, 200);
    assert!(gw.error_lines().is_empty(), "{:?}", gw.error_lines());
}

#[test]
fn a_response_past_the_size_limit_is_not_stored_on_either_path() {
    let up = PyUpstream::start("tiles", 5.0);
    for fast_path in ["on", "off"] {
        let (_dir, gw) = start(
            &up,
            "{ttl: 60, maxObjectSize: 1000}",
            &["--fast-path", fast_path],
        );
        let big = format!("/open/{fast_path}/bytes/2000");
        let before = up.served();
        for _ in 0..2 {
            let r = get(gw.port, "GET", &big, &[]);
            assert_eq!(
                (r.status, r.body.len()),
                (200, 2000),
                "fast path {fast_path}"
            );
            assert_eq!(cache_status(&r), "MISS", "fast path {fast_path}");
        }
        assert_eq!(up.served(), before + 2, "fast path {fast_path}: stored");
        let small = format!("/open/{fast_path}/bytes/500");
        let first = get(gw.port, "GET", &small, &[]);
        let second = get(gw.port, "GET", &small, &[]);
        assert_eq!(
            (cache_status(&first), cache_status(&second)),
            ("MISS", "HIT"),
            "fast path {fast_path}"
        );
        assert_eq!(second.body, first.body);
    }
}

/// `minUses: 3`: a tile is fetched for each of its first two misses without being stored (a
/// tile asked for once costs no store), stored on the third, a hit from then on; on both paths,
/// and counted for the tile, not the consumer (credentials are not part of what is counted).
#[test]
fn a_tile_is_stored_from_its_min_uses_th_miss_on_either_path() {
    let up = PyUpstream::start("tiles", 5.0);
    for fast_path in ["on", "off"] {
        let (_dir, gw) = start(&up, "{ttl: 60, minUses: 3}", &["--fast-path", fast_path]);
        let path = format!("/tiles/{fast_path}/unique/3000/min-uses-{fast_path}.png");
        let before = up.served();
        let mut statuses = Vec::new();
        let mut bodies = Vec::new();
        for consumer in 0..5 {
            let r = tile(&gw, &path, consumer);
            assert_eq!(r.status, 200, "fast path {fast_path}");
            statuses.push(cache_status(&r).to_string());
            bodies.push(r.body);
            if consumer == 1 {
                assert_eq!(
                    gw.metric(r#"tollgate_cache_objects{tier="memory"}"#),
                    0.0,
                    "fast path {fast_path}: nothing stored before the third miss"
                );
            }
        }
        assert_eq!(
            statuses,
            ["MISS", "MISS", "MISS", "HIT", "HIT"],
            "fast path {fast_path}"
        );
        assert_eq!(up.served(), before + 3, "fast path {fast_path}");
        assert!(
            bodies.iter().all(|b| *b == bodies[0] && !b.is_empty()),
            "fast path {fast_path}: every answer is the tile"
        );
        // A tile whose first miss was not stored is not remembered as uncacheable: another
        // tile asked for once stays a miss, and three times is stored.
        let once = format!("/tiles/{fast_path}/unique/3000/once.png");
        assert_eq!(cache_status(&tile(&gw, &once, 0)), "MISS");
        assert_eq!(
            gw.metric(r#"tollgate_cache_objects{tier="memory"}"#),
            1.0,
            "fast path {fast_path}"
        );
    }
}

/// Hits sent faster than the client reads them: each tile's body goes out by `sendfile` from
/// the memory tier's shared memory, the connection's send buffer fills (a later tile finds no
/// room), and the gateway waits for room and goes on where it stopped — the client gets every
/// tile whole, byte for byte, in order.
#[test]
fn hits_sent_faster_than_a_slow_reader_takes_them_reach_it_whole() {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 600}", &[]);
    let (path, expected) = stored_big_tile(&gw);
    let mut slow = support::client::connect(gw.port, 20);
    // What the client leaves unread fills its receive buffer, then the gateway's send buffer,
    // which on loopback grows to the system's largest (`tcp_wmem`): a few tiles more than both
    // hold leave a later tile's `sendfile` without room.
    let mut rcvbuf: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let got = unsafe {
        libc::getsockopt(
            slow.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut rcvbuf as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(got, 0, "SO_RCVBUF");
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    let tiles = (wmem_max + rcvbuf as usize) / expected.len() + 4;
    // One request at a time, each after the gateway took the one before (a request that comes
    // alone is answered on the fast path), none of the answers read.
    let request = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
    for _ in 0..tiles {
        slow.write_all(request.as_bytes()).expect("send");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut pending = Vec::new();
    for tile in 0..tiles {
        let what = format!("tile {tile}");
        let r = support::client::read_next_response(&mut slow, &mut pending, false);
        assert_eq!(cache_status(&r), "HIT", "{what}");
        assert_eq!(r.header("content-length"), Some("250000"), "{what}");
        assert!(r.body == expected, "{what}: other bytes than the tile");
    }
    assert!(pending.is_empty(), "bytes past the last tile");
    assert_eq!(up.served(), 1);
}

/// The send timeout is a pause, not a deadline for the whole response: a large hit that a slow
/// client keeps reading for longer than the timeout comes whole, and one whose client stops
/// reading is let go after it (its connection closed).
#[test]
fn the_send_timeout_is_a_pause_a_slow_reader_of_a_hit_gets_it_whole_a_stopped_one_is_let_go() {
    send_timeout_is_a_pause("on");
}

/// The same through Pingora's session (`--fast-path off`: every answer is written by it).
#[test]
fn the_send_timeout_is_a_pause_on_the_general_path_too() {
    send_timeout_is_a_pause("off");
}

fn send_timeout_is_a_pause(fast_path: &str) {
    use std::io::{Read, Write};
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(
        &up,
        "{ttl: 60}",
        &["--send-timeout", "1", "--fast-path", fast_path],
    );
    // Twice what the kernel's send buffer takes at most (4 MiB), under `maxObjectSize`.
    let path = "/open/bytes/8000000";
    let expected: Vec<u8> = (0..8_000_000u32).map(|j| ((j * 7) % 251) as u8).collect();
    let first = get(gw.port, "GET", path, &[]);
    assert_eq!((first.status, cache_status(&first)), (200, "MISS"));
    // A client with a fixed receive buffer that takes 256 KiB every 100 ms: once the
    // gateway's send buffer is full, more than a second for the rest, no pause near it.
    let connect = || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.set_recv_buffer_size(64 * 1024)
            .expect("a small receive buffer");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", gw.port).parse().unwrap();
        s.connect(&addr.into()).expect("connect");
        let mut s: std::net::TcpStream = s.into();
        let request = format!("GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).expect("send");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s
    };
    let mut s = connect();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let mut n = 0;
        while n < chunk.len() {
            match s.read(&mut chunk[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => panic!("after {} bytes: {e}", got.len() + n),
            }
        }
        got.extend_from_slice(&chunk[..n]);
        if n < chunk.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&got[..got.len().min(400)]).to_string();
    assert!(text.contains("x-cache-status: HIT"), "{text}");
    let body_at = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    assert!(
        got[body_at..] == expected[..],
        "the hit came cut short after {took:?}: {} of {} bytes",
        got.len() - body_at,
        expected.len()
    );
    // A client that stops reading: let go after the send timeout.
    let mut stopped = connect();
    let mut first_bytes = [0u8; 1024];
    stopped
        .read_exact(&mut first_bytes)
        .expect("the answer begins");
    std::thread::sleep(Duration::from_secs(3));
    let open = gw.metric_when("tollgate_client_connections", |n| n <= 1.0);
    assert_eq!(
        open, 1.0,
        "the connection of a client that stopped reading is still held"
    );
    drop(stopped);
    // The same for a tile sent from the memory tier by `sendfile` (at most 256 KiB): a client
    // that asks for it forty times in one write and reads nothing fills the socket's buffers,
    // then is let go.
    let small = "/open/bytes/200000";
    assert_eq!(cache_status(&get(gw.port, "GET", small, &[])), "MISS");
    assert_eq!(cache_status(&get(gw.port, "GET", small, &[])), "HIT");
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(64 * 1024)
        .expect("a small receive buffer");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", gw.port).parse().unwrap();
    s.connect(&addr.into()).expect("connect");
    let mut greedy: std::net::TcpStream = s.into();
    let request = format!("GET {small} HTTP/1.1\r\nHost: h\r\n\r\n");
    greedy
        .write_all(request.repeat(40).as_bytes())
        .expect("send");
    std::thread::sleep(Duration::from_secs(3));
    let open = gw.metric_when("tollgate_client_connections", |n| n <= 1.0);
    assert_eq!(
        open, 1.0,
        "the connection of a client that reads none of its hits is still held"
    );
    assert_eq!(up.served(), 2);
}

/// A client that leaves while a large stored tile goes out was answered all the same: its
/// status and the body's bytes that went are counted, Kargo's `eg` counter among them (the
/// fast path's own writes counted such a hit as never answered), on both paths.
#[test]
fn a_client_that_leaves_during_a_large_hit_was_answered() {
    use std::io::{Read, Write};
    let up = PyUpstream::start("tiles", 5.0);
    // Well past what the loopback's socket buffers hold on both sides (4 MiB and 6 MiB at
    // most by Linux's defaults).
    let size = 24 << 20;
    let path = format!("/tiles/bytes/{size}?apiKey=k0:s0");
    for fast in ["on", "off"] {
        let (_dir, gw) = start(
            &up,
            "{ttl: 600, maxObjectSize: 33554432}",
            &["--fast-path", fast],
        );
        for status in ["MISS", "HIT"] {
            let r = get(gw.port, "GET", &path, &[]);
            assert_eq!((r.status, cache_status(&r)), (200, status), "{fast}");
            assert_eq!(r.body.len(), size, "{fast}");
        }
        let eg = format!(
            r#"eg{{api_endpoint="tiles",consumer="{}",status_code="200",type="SUCCESS"}}"#,
            consumer_id(&gw, 0)
        );
        let served = r#"tollgate_cache_served_bytes_total{api_endpoint="tiles"}"#;
        let (counted, bytes) = (gw.metric(&eg), gw.metric(served));
        assert_eq!(counted, 2.0, "{fast}");
        let mut s = support::client::connect(gw.port, 5);
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
            .expect("send");
        let mut got = vec![0; 200_000];
        s.read_exact(&mut got).expect("the start of the tile");
        assert!(got.starts_with(b"HTTP/1.1 200"), "{fast}");
        drop(s);
        assert_eq!(gw.metric_when(&eg, |n| n > counted), 3.0, "{fast}");
        let went = gw.metric(served) - bytes;
        assert!(
            went > 100_000.0 && went < size as f64,
            "{fast}: {went} bytes of the tile counted as served"
        );
    }
}
