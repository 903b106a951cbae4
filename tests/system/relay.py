"""A TCP relay that makes a local process look like another host to the scheduler.

Every connection to the relay's port is forwarded to ``target`` from the
source address ``source`` (any address of 127.0.0.0/8 is this machine's own),
bytes unchanged in both directions, so TLS runs end to end through it. The
scheduler then sees the connection come from ``source``: a node that dials the
relay is, for the grid, a node of host ``source``.

A relay can also play a wide-area link (:class:`Wan`): every chunk it reads is
delivered after a one-way delay, in each direction. Run as a script it serves
one relay until it is terminated and prints the ``host:port`` to dial on its
first line of output; :mod:`tests.system.netns` starts it that way inside a
network namespace::

    python tests/system/relay.py --target 10.1.2.2:8786 --delay 0.05 --jitter 0.01 --loss 0.01
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Wan:
    """A wide-area link as one direction of a TCP connection sees it.

    Parameters
    ----------
    delay : float
        Mean one-way delay in seconds.
    jitter : float
        Each chunk's delay is drawn uniformly from ``delay - jitter`` to ``delay + jitter``.
    loss : float
        Probability that a chunk is lost. TCP hides the loss and delivers the chunk one
        retransmission timeout later, holding back every chunk behind it, so that is what
        the relay does instead of dropping bytes.
    rto : float
        The retransmission timeout a lost chunk costs (Linux's minimum, 0.2 s).
    """

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    rto: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.jitter <= self.delay:
            raise ValueError(f"jitter must be between 0 and delay ({self.delay}), got {self.jitter}")
        if not 0 <= self.loss < 1:
            raise ValueError(f"loss is a probability in [0, 1), got {self.loss}")
        if self.rto < 0:
            raise ValueError(f"rto must be >= 0, got {self.rto}")

    def latency(self, rng: random.Random) -> float:
        """The time one chunk takes from the relay's reader to its writer."""
        seconds = self.delay + rng.uniform(-self.jitter, self.jitter)
        if self.loss and rng.random() < self.loss:
            seconds += self.rto
        return seconds


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def _delayed_pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wan: Wan, rng: random.Random) -> None:
    """:func:`_pipe` over ``wan``: every chunk is written ``wan.latency()`` after it was read.

    Reading does not wait for delivery (the link carries many chunks at once), but chunks
    leave in the order they came: a chunk never overtakes the one before it, as in TCP.
    """
    loop = asyncio.get_running_loop()
    # bounded, so a reader faster than the link is held back instead of buffering without end
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=256)

    async def receive() -> None:
        due = 0.0
        while True:
            data = await reader.read(65536)
            due = max(due, loop.time() + wan.latency(rng))
            await queue.put((due, data))
            if not data:  # end of stream travels the link too
                return

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                return
            writer.write(data)
            await writer.drain()

    tasks = [asyncio.ensure_future(receive()), asyncio.ensure_future(deliver())]
    try:
        # both end at the end of the stream; either failing (a reset) ends the direction
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()


def _handler(target: str, source: str | None, wan: Wan | None):
    host, port = target.rsplit(":", 1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            local = (source, 0) if source is not None else None
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port), local_addr=local)
        except OSError:
            writer.close()
            return
        try:
            if wan is None:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)
            else:
                seed = random.Random(os.urandom(16))
                await asyncio.gather(
                    _delayed_pipe(reader, up_writer, wan, random.Random(seed.random())),
                    _delayed_pipe(up_reader, writer, wan, random.Random(seed.random())),
                    return_exceptions=True,
                )
        except asyncio.CancelledError:
            # the relay is closing: end quietly (asyncio logs a connection handler's cancellation as an error)
            up_writer.close()
            writer.close()

    return handle


class Relay:
    """Relays running on one background event loop; :meth:`add` one per fake host."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="relay", daemon=True)
        self.thread.start()
        self.servers: list[asyncio.base_events.Server] = []

    def add(self, target: str, source: str | None = None, wan: Wan | None = None) -> str:
        """Start a relay to ``target`` (``host:port``); return the ``host:port`` to dial.

        Parameters
        ----------
        target : str
            ``host:port`` every connection is forwarded to.
        source : str, optional
            Local address the forwarded connections come from; the system's choice if None.
        wan : Wan, optional
            Delay every chunk as this wide-area link would, in each direction.
        """
        handle = _handler(target, source, wan)

        async def start() -> asyncio.base_events.Server:
            return await asyncio.start_server(handle, "127.0.0.1", 0)

        server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=10)
        self.servers.append(server)
        return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        async def stop() -> None:
            for server in self.servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@contextmanager
def relays() -> Iterator[Relay]:
    relay = Relay()
    try:
        yield relay
    finally:
        relay.close()


async def _serve(args: argparse.Namespace) -> None:
    wan = Wan(args.delay, args.jitter, args.loss) if (args.delay or args.loss) else None
    host, port = args.listen.rsplit(":", 1)
    server = await asyncio.start_server(_handler(args.target, args.source, wan), host, int(port))
    bound = server.sockets[0].getsockname()
    print(f"{bound[0]}:{bound[1]}", flush=True)  # the caller waits for this line: the relay is listening
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Relay TCP connections to a target, optionally over an emulated WAN.")
    parser.add_argument("--target", required=True, help="host:port to forward every connection to")
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port to listen on (port 0: any free port)")
    parser.add_argument("--source", default=None, help="local address the forwarded connections come from")
    parser.add_argument("--delay", type=float, default=0.0, help="one-way delay in seconds, each direction")
    parser.add_argument("--jitter", type=float, default=0.0, help="uniform +- spread of the one-way delay, seconds")
    parser.add_argument("--loss", type=float, default=0.0, help="probability a chunk costs one retransmission timeout")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
