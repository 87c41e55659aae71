"""The S3 endpoint the fault tests kill: a TCP relay on the loopback in front of the session's S3 server.

``python tests/service/s3_relay.py PORT UPSTREAM_PORT [--die-on TEXT [--after BYTES]]`` relays every connection
to the server, byte for byte. With ``--die-on``, the first time a client sends ``TEXT`` (a request line such as
``PUT /bucket/gif/blobs/``), the relay passes on that request's headers and ``BYTES`` of its body, then SIGKILLs
itself: to the service that is a server process killed in the middle of that request (connections reset, the port
refusing), and the server behind sees the request cut off. The server keeps what it stored, as a restarted server
keeps its disk, so that a relay started again on the same port is the server back. (moto's server keeps objects in
memory only: killing it would lose them, which no real server does.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal


class Relay:
    def __init__(self, upstream_port: int, die_on: bytes | None, after: int):
        self.upstream_port, self.die_on, self.after = upstream_port, die_on, after

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        answers = asyncio.create_task(self.pipe(up_reader, writer))
        try:
            await self.requests(reader, up_writer)
        finally:
            up_writer.close()
            await answers

    async def requests(self, reader: asyncio.StreamReader, out: asyncio.StreamWriter) -> None:
        """Client to server. Once ``die_on`` went by (also split across two reads), pass on the rest of that request's
        headers and ``after`` bytes of its body, then die."""
        buffer, passed = bytearray(), 0  # passed: how much of the buffer went on to the server
        match: int | None = None
        cut: int | None = None  # where in the buffer to die
        while data := await reader.read(1 << 16):
            buffer += data
            if self.die_on and match is None and (found := buffer.find(self.die_on)) >= 0:
                match = found
            if match is not None and cut is None and (end := buffer.find(b"\r\n\r\n", match)) >= 0:
                cut = end + 4 + self.after
            limit = len(buffer) if cut is None else min(cut, len(buffer))
            out.write(bytes(buffer[passed:limit]))
            await out.drain()
            passed = limit
            if passed == cut:
                os.kill(os.getpid(), signal.SIGKILL)
            if match is None:  # keep only what a match could start in
                del buffer[: max(0, len(buffer) - len(self.die_on or b"") + 1)]
                passed = len(buffer)

    @staticmethod
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Server to client, as it comes."""
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("upstream_port", type=int)
    parser.add_argument("--die-on", help="die the first time a client sends this text")
    parser.add_argument("--after", type=int, default=0, help="bytes of that request's body passed on before dying")
    args = parser.parse_args()
    relay = Relay(args.upstream_port, args.die_on.encode() if args.die_on else None, args.after)
    server = await asyncio.start_server(relay.serve, "127.0.0.1", args.port, reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
