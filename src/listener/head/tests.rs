use super::{
    body_still_to_come, head_complete, head_end, malformed, never_a_head, next_request_at,
    too_many_headers, MAX_HEADER_LINES,
};

#[test]
fn where_a_head_ends() {
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), 27);
    assert_eq!(head_end(b"\r\nGET / HTTP/1.1\n\nbody"), 18);
}

/// What can never become a head is told from its first bytes; what may is waited for.
#[test]
fn heads_that_can_never_be_are_told_early() {
    for never in [
        &b"\x16\x03\x01\x02\x00\x01"[..],
        b"GET /wmts/1/2/3.png\r\n",
        b"GET /a HTTP/1.1\rHost: h",
        b"hello there\n",
        b"GET /a HTTP/1.1 \r\n",
    ] {
        assert!(never_a_head(never, 0), "{}", never.escape_ascii());
        // The same, a byte a read: told at the byte that tells it.
        let told = (1..=never.len()).any(|n| never_a_head(&never[..n], n - 1));
        assert!(told, "{}", never.escape_ascii());
    }
    for may in [
        &b"GE"[..],
        b"GET /wmts/1/2/3.png",
        b"GET /a HTTP/1.1\r",
        b"GET /a HTTP/1.1\r\nHost: h\r\n",
        b"GET /a HTTP/1.0\nHost",
        b"GET /a b HTTP/1.1\r\nX: y",
        b"PRI * HTTP/2.0\r\n",
    ] {
        assert!(!never_a_head(may, 0), "{}", may.escape_ascii());
        let told = (1..=may.len()).any(|n| never_a_head(&may[..n], n - 1));
        assert!(!told, "{}", may.escape_ascii());
    }
}

/// Pingora's parser's verdict on a head, with what may follow it in the buffer: only a head
/// it refuses is malformed — not one followed by its body or the next request, nor one
/// it cannot finish (nothing more is read).
#[tokio::test]
async fn only_a_head_the_parser_refuses_is_malformed() {
    for ok in [
        "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        "GET /a HTTP/1.1\nHost: h\n\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: h\r\n",
        "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        assert!(malformed(ok.as_bytes()).await.is_none(), "{ok:?}");
    }
    for bad in [
        "GARBAGE\r\n\r\n",
        "GET /a HTTP/1.1\r\nHo st: h\r\n\r\n",
        "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
        "GET /a?q=a>b HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        assert!(malformed(bad.as_bytes()).await.is_some(), "{bad:?}");
    }
}

#[test]
fn splits_a_bodiless_head_from_the_next_request_only() {
    let get = "GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(next_request_at(get.as_bytes()), None, "alone");
    let two = format!("{get}GET /b HTTP/1.1\r\n");
    assert_eq!(next_request_at(two.as_bytes()), Some(get.len()));
    let led = format!("\r\n{get}GET /b");
    assert_eq!(
        next_request_at(led.as_bytes()),
        Some(get.len() + 2),
        "blank lines first"
    );
    let bare = "GET /a HTTP/1.1\nHost: a\n\n";
    assert_eq!(
        next_request_at(bare.as_bytes()),
        None,
        "a bare-LF head alone"
    );
    let bare_then = format!("{get}{bare}");
    assert_eq!(next_request_at(bare_then.as_bytes()), Some(get.len()));
    // A bare-LF head before a CRLF one is split from it too (it was left whole).
    let then_crlf = format!("{bare}{get}");
    assert_eq!(next_request_at(then_crlf.as_bytes()), Some(bare.len()));
    // A body of known length is the request's, what follows it the next request's.
    let post = "POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
    let post_then = format!("{post}GET /b");
    assert_eq!(next_request_at(post_then.as_bytes()), Some(post.len()));
    let cut = format!("{post}GET /b");
    assert_eq!(
        next_request_at(&cut.as_bytes()[..post.len() - 1]),
        None,
        "a body not whole"
    );
    assert_eq!(next_request_at(post.as_bytes()), None, "a body alone");
    // What follows a head that announces a chunked body, two lengths, a length that is not
    // digits, a switch or a tunnel is not a request.
    for head in [
        "POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhelloGET",
        "POST /a HTTP/1.1\r\nContent-Length: +5\r\n\r\nhelloGET",
        "POST /a HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\nhelloGET",
        "POST /a HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET",
        "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x01\x00",
        "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03",
        "GET /a HTTP/1.1\r\nBad Header\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(next_request_at(head.as_bytes()), None, "{head:?}");
    }
}

#[test]
fn tells_how_much_of_a_body_is_still_to_come() {
    let get = "GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(body_still_to_come(get.as_bytes()), Some(0));
    assert_eq!(
        body_still_to_come(b"\r\nGET /a HTTP/1.1\nHost: a\n\n"),
        Some(0)
    );
    let post = "POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\n";
    assert_eq!(body_still_to_come(post.as_bytes()), Some(10));
    assert_eq!(
        body_still_to_come(format!("{post}hello").as_bytes()),
        Some(5)
    );
    assert_eq!(
        body_still_to_come(format!("{post}hello12345").as_bytes()),
        Some(0)
    );
    assert_eq!(
        body_still_to_come(b"POST /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        Some(0)
    );
    // A request line Pingora's session escapes (a space in the target) and reads.
    assert_eq!(
        body_still_to_come(b"POST /a b HTTP/1.1\r\nContent-Length: 4\r\n\r\nab"),
        Some(2)
    );
    assert_eq!(body_still_to_come(b"CONNECT a b HTTP/1.1\r\n\r\n"), None);
    for head in [
        "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        "POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        "POST /a HTTP/1.1\r\nContent-Length: 1,1\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: a\r\n",
    ] {
        assert_eq!(body_still_to_come(head.as_bytes()), None, "{head:?}");
    }
}

#[test]
fn counts_the_header_lines_of_the_first_head_only() {
    let head = |n: usize, end: &str| {
        let lines: String = (0..n).map(|i| format!("a{i}:{end}")).collect();
        format!("GET / HTTP/1.1{end}{lines}{end}")
    };
    assert!(!too_many_headers(head(MAX_HEADER_LINES, "\r\n").as_bytes()));
    assert!(too_many_headers(
        head(MAX_HEADER_LINES + 1, "\r\n").as_bytes()
    ));
    assert!(!too_many_headers(head(MAX_HEADER_LINES, "\n").as_bytes()));
    assert!(too_many_headers(
        head(MAX_HEADER_LINES + 1, "\n").as_bytes()
    ));
    // Two heads with as many lines between them as one may have: neither has too many.
    let half = MAX_HEADER_LINES / 2 + 10;
    let two = format!("{}{}", head(half, "\r\n"), head(half, "\r\n"));
    assert!(!too_many_headers(two.as_bytes()));
    let led = format!("\r\n\r\n{}", head(MAX_HEADER_LINES + 1, "\r\n"));
    assert!(too_many_headers(led.as_bytes()), "blank lines first");
}

#[test]
fn finds_the_end_of_a_head() {
    let h = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert!(head_complete(h, 0));
    assert!(head_complete(h, h.len() - 1), "an end split over two reads");
    assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
    assert!(head_complete(b"GET / HTTP/1.1\nHost: a\n\n", 0));
    assert!(
        !head_complete(b"\r\n\r\n", 0),
        "blank lines alone are no head"
    );
    assert!(head_complete(b"\r\nGET / HTTP/1.1\r\n\r\n", 0));
    assert!(!head_complete(b"GET / HTTP/1.1\r\n", 0));
}
