"""Idle keep-alive clients for the load benchmark: N connections each fetch one tile, then sit
idle (as map users between two views) until this process is told to stop.

    python3 idle.py HOST PORT PATH N [HEADER]

Prints `ready <answered> <failed>` once every connection has its answer, then waits for stdin to
close. A connection the server does not answer within 30 s counts as failed."""
import asyncio
import resource
import sys


async def one(host, port, request, sem, results):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
        except Exception:
            results.append(None)
            return None
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await asyncio.wait_for(reader.readexactly(length), 30)
        results.append(head.split(b" ", 2)[1] == b"200")
        return writer
    except Exception:
        results.append(False)
        writer.close()
        return None


async def main():
    host, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    header = sys.argv[5] + "\r\n" if len(sys.argv) > 5 and sys.argv[5] else ""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{header}\r\n".encode()
    sem = asyncio.Semaphore(200)
    results = []
    writers = await asyncio.gather(*(one(host, port, request, sem, results) for _ in range(n)))
    ok = sum(1 for r in results if r)
    print(f"ready {ok} {n - ok}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for w in writers:
        if w is not None:
            w.close()


asyncio.run(main())
