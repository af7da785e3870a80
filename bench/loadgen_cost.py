"""Benchmark: the load generator's own CPU per request, httpx against aiohttp (why bench/ drives
its HTTP load with aiohttp).

Every benchmark runs its load generator on the same 2 cores as the stack, so a client that costs
milliseconds per request takes CPU the stack would otherwise use and caps the rate it can offer.
This starts a minimal keep-alive HTTP server in a child process (a fixed 200 with a JSON body, no
framework) and posts N requests through each client at the given concurrency, printing the
client's CPU time per request (process_time) and its rate.

    .venv/bin/python bench/loadgen_cost.py --requests 6000 --concurrency 64
"""
import argparse
import asyncio
import json
import multiprocessing
import socket
import time

import aiohttp
import httpx

BODY = b'{"event":{"seq":1,"occurred_at":"2026-12-01T19:00:00+00:00"}}'
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


def serve(sock: socket.socket) -> None:
    async def handle(reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def main():
        server = await asyncio.start_server(handle, sock=sock)
        await server.serve_forever()

    asyncio.run(main())


async def with_httpx(url: str, n: int, concurrency: int) -> None:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one():
            async with gate:
                r = await client.post("/api/v1/trackers/1/start", headers={"Authorization": "Token x"})
                json.loads(r.content)

        await asyncio.gather(*[one() for _ in range(n)])


async def with_aiohttp(url: str, n: int, concurrency: int) -> None:
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=concurrency)) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one():
            async with gate:
                async with client.post("/api/v1/trackers/1/start", headers={"Authorization": "Token x"}) as r:
                    json.loads(await r.read())

        await asyncio.gather(*[one() for _ in range(n)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = multiprocessing.get_context("fork").Process(target=serve, args=(sock,), daemon=True)
    server.start()
    try:
        print(f"== load generator cost: {args.requests} POSTs, {args.concurrency} concurrent, minimal server ==")
        for _ in range(args.rounds):
            for name, client in (("httpx", with_httpx), ("aiohttp", with_aiohttp)):
                cpu, wall = time.process_time(), time.monotonic()
                asyncio.run(client(url, args.requests, args.concurrency))
                cpu, wall = time.process_time() - cpu, time.monotonic() - wall
                print(f"{name:8} {cpu / args.requests * 1e6:7.0f} us CPU per request, "
                      f"{args.requests / wall:7.0f} requests/s")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
