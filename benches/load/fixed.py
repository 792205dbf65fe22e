"""A fixed number of GET requests, one after another on one keep-alive connection, for the
callgrind measure (benches/load/callgrind.sh).

    python3 fixed.py HOST PORT PATH N

Prints how many were answered 200."""
import socket, sys
host, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.create_connection((host, port))
req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
f = s.makefile("rb")
ok = 0
for _ in range(n):
    s.sendall(req)
    status = f.readline()
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    f.read(length)
    ok += status.split(b" ")[1] == b"200"
print(ok)
