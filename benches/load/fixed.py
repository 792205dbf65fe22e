"""A fixed number of GET requests, one after another on one keep-alive connection, for the
callgrind measure (benches/load/callgrind.sh).

    python3 fixed.py HOST PORT PATH N
    FIXED_HEADERS=browser python3 fixed.py HOST PORT PATH N

A `{i}` in PATH becomes a name no earlier run used (a random run id and the request's number),
so every request asks for a different resource: a cache miss each time. With
FIXED_HEADERS=browser each request carries the headers a browser sends with a map tile (Chrome's
for an image, 13 headers in 0.7 KB), else only `Host`.
Prints how many were answered 200."""
import os, random, socket, sys
host, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
BROWSER = (
    "Connection: keep-alive\r\n"
    'sec-ch-ua: "Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"\r\n'
    "sec-ch-ua-mobile: ?0\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36\r\n"
    'sec-ch-ua-platform: "Linux"\r\n'
    "Accept: image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8\r\n"
    "Sec-Fetch-Site: same-site\r\n"
    "Sec-Fetch-Mode: no-cors\r\n"
    "Sec-Fetch-Dest: image\r\n"
    "Referer: https://maps.example.org/\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\n"
    "Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n"
)
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
