"""A fixed number of GET requests, one after another on one keep-alive connection, for the
callgrind measure (benches/load/callgrind.sh).

    python3 fixed.py HOST PORT PATH N
    FIXED_HEADERS=browser python3 fixed.py HOST PORT PATH N

A `{i}` in PATH becomes a name no earlier run used (a random run id and the request's number),
so every request asks for a different resource: a cache miss each time. With
FIXED_HEADERS=browser each request carries the headers a browser sends with a map tile (Chrome's
for an image, benches/load/browser.headers: 12 headers besides Host in 0.7 KB), else only
`Host`.
Prints how many were answered 200."""
import os, random, socket, sys
host, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
# Chrome's headers with a tile image of a map on another site (Host aside), one a line; the
# load benchmark's browser scenario sends the same.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser.headers")) as f:
    BROWSER = "".join(line.rstrip("\n") + "\r\n" for line in f if line.strip())
extra = BROWSER if os.environ.get("FIXED_HEADERS") == "browser" else ""
s = socket.create_connection((host, port))
run = random.randrange(1 << 40)
f = s.makefile("rb")
ok = 0
for i in range(n):
    s.sendall(f"GET {path.replace('{i}', f'{run}-{i}')} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
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
