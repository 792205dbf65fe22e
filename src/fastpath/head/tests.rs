use super::*;

/// What the session reads from a head, for comparison.
fn by_session(head: &[u8]) -> Option<(Box<RequestHeader>, bool)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let stream: pingora_core::protocols::Stream =
            Box::new(crate::listener::io::ClientIo::new(server));
        let mut s = pingora_core::protocols::http::v1::server::HttpSession::new(stream);
        s.set_pipelined_prefix(bytes::BytesMut::from(head));
        match s.read_request().await {
            Ok(Some(_)) => Some((Box::new(s.req_header().clone()), s.will_keepalive())),
            _ => None,
        }
    })
}

/// Reads `head` both ways: when it is read here, the session reads the same request.
fn same_as_the_session(head: &[u8]) {
    let Some(Plain {
        req: ours,
        target,
        keepalive,
    }) = read(&Bytes::copy_from_slice(head))
    else {
        return;
    };
    let shown = head.escape_ascii().to_string();
    let (theirs, keep) =
        by_session(head).unwrap_or_else(|| panic!("read here but refused by the session: {shown}"));
    assert_eq!(ours.method, theirs.method, "{shown}");
    let target = std::str::from_utf8(&head[target]).expect("a target read here is text");
    let (ours_t, theirs_t) = (
        RequestTarget::origin_form(target),
        RequestTarget::of(&theirs),
    );
    assert_eq!(
        (ours_t.path, ours_t.query, ours_t.url, ours_t.authority),
        (
            theirs_t.path,
            theirs_t.query,
            theirs_t.url,
            theirs_t.authority
        ),
        "{shown}"
    );
    assert_eq!(ours.version, theirs.version, "{shown}");
    assert_eq!(ours.headers, theirs.headers, "{shown}");
    assert_eq!(keepalive, keep, "{shown}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
    /// Heads made of what needs judgement (odd targets, repeated or odd `Host` and
    /// `Connection`, body and upgrade headers, bare line ends): whatever is read here is
    /// read the same by the session.
    #[test]
    fn whatever_is_read_here_the_session_reads_alike(
        method in proptest::prop_oneof![4 => "GET", 1 => "HEAD", 1 => "POST|get"],
        target in proptest::prop_oneof![
            6 => "/[a-z/?%.é=&\"<>`{|}]{0,12}",
            1 => "(\\*|http://a|/a#b|/a b|)[a-z/?#@:]{0,6}",
        ],
        version in proptest::prop_oneof![6 => "HTTP/1\\.[01]", 1 => "HTTP/2\\.0|HTTP/1\\.1 "],
        headers in proptest::collection::vec(
            (
                proptest::prop_oneof![
                    4 => "Host|X-A|Accept|x-a|Sec-Fetch-Mode|sec-ch-ua|SEC-CH-UA-MOBILE|sec-fetch",
                    2 => "Connection|host",
                    1 => "Content-Length|Transfer-Encoding|Upgrade|Expect|X A",
                ],
                proptest::prop_oneof![
                    4 => "[a-z0-9.:]{0,8}",
                    2 => "close|keep-alive|Keep-Alive| close|close ",
                    1 => "[ a-z0-9@,:\té-]{0,10}",
                ],
            ),
            0..5,
        ),
        bare in proptest::bool::ANY,
    ) {
        let eol = if bare { "\n" } else { "\r\n" };
        let mut head = format!("{method} {target} {version}{eol}");
        for (n, v) in &headers {
            head.push_str(&format!("{n}: {v}{eol}"));
        }
        head.push_str(eol);
        same_as_the_session(head.as_bytes());
    }
}

#[test]
fn plain_heads_read_as_the_session_reads_them() {
    let heads: [&[u8]; 7] = [
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /wmts/1/2/3.png?jwt=a.b.c&x=1 HTTP/1.1\r\nHost: tiles\r\nAccept: */*\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nhost: tiles:8080\r\nConnection: close\r\n\r\n",
        b"GET /a HTTP/1.0\r\nHost: t\r\n\r\n",
        b"GET /a HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
        b"GET /a?q=%20b HTTP/1.1\r\nX-Two: 1\r\nx-two: 2\r\nOrigin: http://map\r\n\r\n",
        b"GET /a HTTP/1.1\nHost: t\n\n",
    ];
    for head in heads {
        assert!(
            read(&Bytes::copy_from_slice(head)).is_some(),
            "left unread: {}",
            head.escape_ascii()
        );
        same_as_the_session(head);
    }
}

/// A plain target needs no `Uri`: every byte it may hold is one `http` accepts wherever it
/// stands, in the path or in the query.
#[test]
fn every_byte_of_a_plain_target_is_one_http_accepts_anywhere() {
    for b in 0..=255u8 {
        if !plain_target(&[b'/', b]) {
            continue;
        }
        for target in [
            vec![b'/', b],
            vec![b'/', b'?', b],
            vec![b'/', b'a', b'?', b'q', b],
        ] {
            assert!(
                Uri::try_from(&target[..]).is_ok(),
                "{} is plain but refused",
                target.escape_ascii()
            );
        }
    }
    assert!(plain_target(
        b"/wmts/1/2/3.png?jwt=a.b_c-d&x={1}|[2]~!$'()*+,;:@"
    ));
    for odd in [
        &b"/a b"[..],
        b"/a\"",
        b"/a?<",
        b"/a`",
        b"/caf\xc3\xa9",
        b"/a\x7f",
    ] {
        assert!(!plain_target(odd), "{}", odd.escape_ascii());
    }
}

/// The names kept for browsers are the names `http` makes of them, in any case.
#[test]
fn session_only_names_are_those_headers() {
    for (name, bytes) in SESSION_ONLY.iter().zip(SESSION_ONLY_NAMES) {
        assert_eq!(name.as_str().as_bytes(), bytes);
    }
}

#[test]
fn common_names_are_the_names_http_makes() {
    for name in COMMON_NAMES {
        for spelled in [name.to_string(), name.to_ascii_uppercase()] {
            let made = HeaderName::from_bytes(spelled.as_bytes()).expect("a name");
            assert_eq!(common(spelled.as_bytes()), Some(&made), "{spelled}");
        }
    }
    assert_eq!(common(b"sec-fetch"), None);
    assert_eq!(common(b"sec-ch-ua-model"), None);
}

#[test]
fn heads_needing_judgement_are_left_to_the_session() {
    let heads: [&[u8]; 12] = [
        b"POST /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"GET /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        b"GET http://tiles/a HTTP/1.1\r\nHost: tiles\r\n\r\n",
        b"GET /a#f HTTP/1.1\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: u@a\r\n\r\n",
        b"GET /a HTTP/1.1\r\nConnection: close, te\r\n\r\n",
        b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: t\r\n",
    ];
    for head in heads {
        assert!(
            read(&Bytes::copy_from_slice(head)).is_none(),
            "{}",
            head.escape_ascii()
        );
    }
}
