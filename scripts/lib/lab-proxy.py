#!/usr/bin/env python3
"""A slow link for the network lab (scripts/stack --lab slow): a TCP proxy that
delays every chunk of bytes, both ways, by a fixed latency plus a random jitter.

    lab-proxy.py --latency-ms 50 --jitter-ms 150 LISTEN_IP:PORT=UPSTREAM_IP:PORT ...

Invariants: bytes of one direction of one connection leave in the order they came
(the delay is applied to a queue, never by reordering), and every queue is bounded
(a full queue stops reading that side, so TCP's own flow control pushes back).
The kernel here has no sch_netem, so latency is made in user space; loss is made in
the lab's bridge (`scripts/stack --lab lossy`).
"""

import argparse
import asyncio
import random
import sys
import time

QUEUE_CHUNKS = 256  # per direction of a connection
CHUNK = 65536


async def pump(reader, writer, latency, jitter):
    queue = asyncio.Queue(maxsize=QUEUE_CHUNKS)

    async def read_side():
        try:
            while True:
                data = await reader.read(CHUNK)
                # One delay per chunk, never earlier than the chunk before it.
                await queue.put((time.monotonic() + latency + random.uniform(0, jitter), data))
                if not data:
                    return
        except (ConnectionError, OSError):
            await queue.put((time.monotonic(), b""))

    async def write_side():
        last = 0.0
        try:
            while True:
                due, data = await queue.get()
                due = max(due, last)
                last = due
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    writer.write_eof() if writer.can_write_eof() else writer.close()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return

    await asyncio.gather(read_side(), write_side())


async def serve(listen, upstream, latency, jitter):
    host, port = upstream.rsplit(":", 1)

    async def handle(client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(
                pump(client_reader, up_writer, latency, jitter),
                pump(up_reader, client_writer, latency, jitter),
            )
        finally:
            for w in (client_writer, up_writer):
                w.close()

    lhost, lport = listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, lhost, int(lport), reuse_address=True)
    return server


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, required=True)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("maps", nargs="+", metavar="LISTEN=UPSTREAM")
    args = parser.parse_args()
    if args.latency_ms < 0 or args.jitter_ms < 0:
        parser.error("latency and jitter must not be negative")
    servers = []
    for m in args.maps:
        if "=" not in m:
            parser.error(f"not LISTEN=UPSTREAM: {m}")
        listen, upstream = m.split("=", 1)
        servers.append(await serve(listen, upstream, args.latency_ms / 1000, args.jitter_ms / 1000))
    print(f"lab-proxy: {len(servers)} link(s), {args.latency_ms:g} ms + up to {args.jitter_ms:g} ms", file=sys.stderr, flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
