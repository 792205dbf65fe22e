"""A fixed number of GET requests, one after another on one keep-alive connection, for the
callgrind measure (benches/load/callgrind.sh).

    python3 fixed.py HOST PORT PATH N

A `{i}` in PATH becomes a name no earlier run used (a random run id and the request's number),
so every request asks for a different resource: a cache miss each time.
Prints how many were answered 200."""
import random, socket, sys
host, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.create_connection((host, port))
run = random.randrange(1 << 40)
f = s.makefile("rb")
ok = 0
for i in range(n):
    s.sendall(f"GET {path.replace('{i}', f'{run}-{i}')} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
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
