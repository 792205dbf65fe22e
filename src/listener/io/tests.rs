use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads from `addr` until the peer closes, slowly for the first 512 KiB (the writer meets
/// a full socket).
async fn read_slowly(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 7000];
    loop {
        let n = client.read(&mut buf).await.unwrap();
        if n == 0 {
            return got;
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() < 512 * 1024 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

/// A small head buffered, then bodies large enough to go straight to the socket, to a
/// client that reads slowly: every byte arrives, in order, whatever the socket took.
#[tokio::test]
async fn large_writes_go_through_with_what_is_buffered() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut expected = b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n".to_vec();
    let bodies: Vec<Vec<u8>> = [9 * 1024, 3 * 1024 * 1024, 100, 64 * 1024]
        .iter()
        .enumerate()
        .map(|(i, n)| (0..*n).map(|b| (b * 7 + i) as u8).collect())
        .collect();
    let head = expected.clone();
    for b in &bodies {
        expected.extend_from_slice(b);
    }
    let writer = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut io = ClientIo::new(tcp);
        io.write_all(&head).await.unwrap();
        for b in &bodies {
            io.write_all(b).await.unwrap();
        }
        io.flush().await.unwrap();
        assert!(io.out.is_empty() && io.out.capacity() == 0);
        AsyncWriteExt::shutdown(&mut io).await.unwrap();
    });
    let got = read_slowly(addr).await;
    writer.await.unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "bytes out of order");
}

/// Heads with bodies from a file (by `sendfile`), large enough to fill the socket, to a
/// client that reads slowly: every byte arrives, in order; a connection with something
/// buffered is left to the caller.
#[tokio::test]
async fn heads_with_bodies_from_a_file_arrive_whole_and_in_order() {
    use std::io::Write;
    use std::os::fd::{FromRawFd, OwnedFd};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let content: Vec<u8> = (0..3 * 1024 * 1024).map(|b| (b * 11 % 251) as u8).collect();
    let fd = unsafe { libc::memfd_create(c"test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(&content).unwrap();
    let parts = [
        (100usize, 20 * 1024usize),
        (7, 2 * 1024 * 1024),
        (4096, 100),
    ];
    let mut expected = Vec::new();
    for (i, (at, len)) in parts.iter().enumerate() {
        expected.extend_from_slice(format!("head {i}\r\n").as_bytes());
        expected.extend_from_slice(&content[*at..at + len]);
    }
    expected.extend_from_slice(b"buffered");
    let writer = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut stream: Stream = Box::new(ClientIo::new(tcp));
        for (i, (at, len)) in parts.iter().enumerate() {
            let head = format!("head {i}\r\n");
            let sent = send_pair_from_file(&stream, head.as_bytes(), fd, *at as u64, *len).await;
            sent.expect("a plain connection").unwrap();
        }
        assert!(sends_files(&stream));
        stream.write_all(b"buffered").await.unwrap();
        assert!(!sends_files(&stream));
        let refused = send_pair_from_file(&stream, b"x", fd, 0, 10).await;
        assert!(refused.is_none(), "written after what is buffered");
        AsyncWriteExt::shutdown(&mut stream).await.unwrap();
        drop(file);
    });
    let got = read_slowly(addr).await;
    writer.await.unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "bytes out of order");
}

/// Head-and-body pairs written as a cache hit is, with something buffered before them or
/// not, large or small, to a client that reads slowly: every byte arrives, in order.
#[tokio::test]
async fn vectored_writes_arrive_whole_and_in_order() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let piece =
        |n: usize, salt: usize| -> Vec<u8> { (0..n).map(|b| (b * 13 + salt) as u8).collect() };
    let writes: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (piece(300, 1), piece(20 * 1024, 2)),
        (piece(200, 3), piece(100, 4)),
        (piece(250, 5), piece(2 * 1024 * 1024, 6)),
        (piece(310, 7), piece(20 * 1024, 8)),
    ];
    let mut expected = b"buffered first".to_vec();
    for (a, b) in &writes {
        expected.extend_from_slice(a);
        expected.extend_from_slice(b);
    }
    let writer = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut io = ClientIo::new(tcp);
        io.write_all(b"buffered first").await.unwrap();
        for (a, b) in &writes {
            // Flushed after each: the next pair finds nothing buffered, and a large one goes
            // straight to the socket.
            write_pair(&mut io, a, b).await.unwrap();
        }
        assert!(io.out.is_empty() && io.out.capacity() == 0);
        AsyncWriteExt::shutdown(&mut io).await.unwrap();
    });
    let got = read_slowly(addr).await;
    writer.await.unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "bytes out of order");
}

/// A connection held for a request reads its body's rest and no further: what follows is
/// left for the listener (read once released); at the body's end the client's close is seen
/// past blank lines, and a client whose next request came is not taken as gone.
#[tokio::test]
async fn a_held_connection_reads_its_body_and_no_further() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pair = || async {
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let stream: Stream = Box::new(ClientIo::new(tcp));
        (client, stream)
    };
    // The body's rest, then nothing more until released.
    let (mut client, mut stream) = pair().await;
    hold_after_request(&stream, b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab");
    client.write_all(b"cdeGET /next").await.unwrap();
    let mut body = Vec::new();
    while body.len() < 3 {
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.unwrap();
        body.extend_from_slice(&buf[..n]);
    }
    assert_eq!(body, b"cde");
    assert!(pends(&mut stream).await, "the next request is left unread");
    release(&stream);
    let mut next = [0u8; 9];
    stream.read_exact(&mut next).await.unwrap();
    assert_eq!(&next, b"GET /next");
    // At the body's end: blank lines looked past, then the client's close read as the end.
    let (mut client, mut stream) = pair().await;
    hold_after_request(&stream, b"GET / HTTP/1.1\r\n\r\n");
    client.write_all(b"\r\n\r\n").await.unwrap();
    assert!(pends(&mut stream).await);
    drop(client);
    let mut byte = [0u8; 1];
    assert_eq!(
        stream.read(&mut byte).await.unwrap(),
        0,
        "the client's close"
    );
    // A client whose next request came: its close is not the end.
    let (client, mut stream) = pair().await;
    hold_after_request(&stream, b"GET / HTTP/1.1\r\n\r\n");
    next_request_read(&stream, true);
    drop(client);
    assert!(pends(&mut stream).await);
}

/// Whether a read of `stream` pends for a while.
async fn pends(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let read = stream.read(&mut byte);
    tokio::time::timeout(std::time::Duration::from_millis(100), read)
        .await
        .is_err()
}
