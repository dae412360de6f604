"""The WebSocket server of `edge-asr serve` (protocol.py says what goes over the wire): one Session per
connection between the client and its stream of the scheduler, and plain HTTP on the same port for
/metrics and /healthz.

The scheduler calls back from its worker thread; each callback is moved onto the event loop and into
the session's outbox, which one coroutine drains, so a client gets its messages in the order they
were made and never from two writers at once.
"""
from __future__ import annotations

import asyncio
import hmac
import signal
import sys
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from edge_asr.runtime.gpu_memory import gpu_memory_used_mb
from edge_asr.runtime.serving import protocol
from edge_asr.runtime.serving.metrics import ArrivalClock, ServerMetrics
from edge_asr.runtime.serving.protocol import END_OF_STREAM, SHUTTING_DOWN, Closing, ProtocolError
from edge_asr.runtime.serving.scheduler import CapacityError, StreamScheduler
from edge_asr.runtime.serving.serve_command import ServeOptions
from edge_asr.runtime.streaming.events import StreamEvent

RETRY_S = 0.02  # how often a full stream queue is tried again
PIECE_SAMPLES = 16000  # a message goes into the stream's queue a second at a time
# How long a close handshake may take before the connection is dropped (websockets' default, 10 s, let one
# client that vanished without closing hold up the shutdown that long).
CLOSE_TIMEOUT_S = 2.0


class StreamServer:
    def __init__(self, scheduler: StreamScheduler, options: ServeOptions,
                 gpu_memory_mb: Callable[[], float | None] = gpu_memory_used_mb):
        self.scheduler, self.options = scheduler, options
        self.metrics = ServerMetrics(scheduler.stats, gpu_memory_mb)
        self.sessions: set[Session] = set()
        self._server: Server | None = None

    async def start(self) -> None:
        self.scheduler.start()
        self._server = await serve(self._connect, self.options.host, self.options.port,
                                   process_request=self._http, max_size=self.options.max_message_bytes,
                                   close_timeout=CLOSE_TIMEOUT_S)

    @property
    def url(self) -> str:
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"ws://[{host}]:{port}/" if ":" in host else f"ws://{host}:{port}/"

    async def shutdown(self) -> None:
        """No new connections; every stream gets the finals already due, the closed event and code 1001."""
        self._server.close(close_connections=False)
        for session in self.sessions:
            session.closing = session.closing or SHUTTING_DOWN
        await asyncio.to_thread(self.scheduler.stop)
        await self._server.wait_closed()

    def abort(self) -> None:
        """Drop every connection at once, finals or not: a second signal's answer to a shutdown that waits."""
        for session in self.sessions:
            session.connection.transport.abort()

    async def _connect(self, connection: ServerConnection) -> None:
        session = Session(connection, self)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        """Before the handshake: /healthz and /metrics answered as plain HTTP, the token checked."""
        url = urlsplit(request.path)
        if url.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        # On loopback /metrics stays open, as local exporters are, so that a scraper there needs no secret.
        needs_token = self.options.token is not None and (url.path != "/metrics" or not self.options.loopback)
        if needs_token and not self._authorized(request, url.query):
            self.metrics.error("bad_token")
            return connection.respond(HTTPStatus.UNAUTHORIZED, "This server wants Authorization: Bearer TOKEN.\n")
        if url.path == "/metrics":
            response = connection.respond(HTTPStatus.OK, self.metrics.render().decode())
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response
        if url.path != "/":
            return connection.respond(HTTPStatus.NOT_FOUND, "Streams are served at /, metrics at /metrics.\n")
        return None

    def _authorized(self, request: Request, query: str) -> bool:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        offered = credentials.strip() if scheme.lower() == "bearer" else parse_qs(query).get("token", [""])[0]
        return hmac.compare_digest(offered.encode(), self.options.token.encode())


class Session:
    """One connection and its stream. A reader takes the client's messages until the client ends the
    stream, falls idle or goes; the outbox is drained until the scheduler closes the stream."""

    def __init__(self, connection: ServerConnection, server: StreamServer):
        self.connection, self.server, self.options = connection, server, server.options
        self.loop = asyncio.get_running_loop()
        # Text to send; a Closing (send the closed event, then close); None: the connection is gone.
        self.outbox: asyncio.Queue[str | Closing | None] = asyncio.Queue()
        self.closing: Closing | None = None  # the stream is ending, and why
        self.clock = ArrivalClock()
        self.open = False  # the scheduler holds the stream: until it closes it, or it is aborted

    async def run(self) -> None:
        try:
            self.handle = self.server.scheduler.open_stream(
                self._from_worker(self._events), self._from_worker(self._error), self._from_worker(self._closed))
        except CapacityError as err:
            self.server.metrics.error("capacity")
            await self._close(Closing(protocol.TRY_AGAIN_LATER, str(err)))
            return
        self.open = True
        reader = asyncio.create_task(self._read())
        try:
            await self.connection.send(protocol.ready(self.handle.id))
            await self._write()
        except ConnectionClosed:
            pass
        finally:
            reader.cancel()
            self._abort()

    async def _write(self) -> None:
        while (item := await self.outbox.get()) is not None:
            if isinstance(item, Closing):
                await self._close(item)
                return
            await self.connection.send(item)

    async def _close(self, closing: Closing) -> None:
        await self.connection.send(protocol.closed(closing.reason))
        await self.connection.close(closing.code, closing.reason)

    async def _read(self) -> None:
        try:
            while self.closing is None:
                try:
                    async with asyncio.timeout(self.options.idle_timeout_s):
                        message = await self.connection.recv()
                except TimeoutError:
                    self.server.metrics.error("idle")
                    self._finish(Closing(protocol.IDLE, f"idle for {self.options.idle_timeout_s:g} s"))
                else:
                    await self._take(message)
            while True:  # after the end, what still comes is dropped: unread, it would hold up the close reply
                await self.connection.recv()
        except ConnectionClosed as err:
            if err.sent is not None and err.sent.code == protocol.TOO_BIG:
                self.server.metrics.error("too_big")
            self.outbox.put_nowait(None)

    async def _take(self, message: str | bytes) -> None:
        try:
            if isinstance(message, str):
                protocol.check_end(message)
                self._finish(END_OF_STREAM)
            else:
                await self._push(protocol.decode_audio(message))
        except ProtocolError as err:
            self.server.metrics.error("malformed")
            self.outbox.put_nowait(protocol.error(str(err)))

    async def _push(self, samples: np.ndarray) -> None:
        """While the stream's queue is full this socket is not read, so TCP slows the client down. A message
        goes into the queue a second at a time: one longer than the queue (up to --max-message-bytes, 32 s)
        fits as the queue drains, rather than waiting for room it can never have."""
        for start in range(0, len(samples), PIECE_SAMPLES):
            if not await self._push_piece(samples[start : start + PIECE_SAMPLES]):
                return

    async def _push_piece(self, samples: np.ndarray) -> bool:
        deadline = self.loop.time() + self.options.backpressure_timeout_s
        while not self.handle.push(samples):
            if self.closing is not None:  # the server is shutting down: no more audio is taken
                return False
            if self.loop.time() > deadline:
                self.server.metrics.error("backpressure")
                self._abort()
                self.closing = Closing(protocol.TRY_AGAIN_LATER, "server overloaded: the audio queue stayed full "
                                       f"for {self.options.backpressure_timeout_s:g} s")
                self.outbox.put_nowait(self.closing)
                return False
            await asyncio.sleep(RETRY_S)
        self.clock.arrived(len(samples))
        return True

    def _finish(self, closing: Closing) -> None:
        self.closing = closing
        self.handle.finish()

    def _abort(self) -> None:
        if self.open:
            self.open = False
            self.handle.abort()

    def _from_worker(self, callback: Callable) -> Callable:
        return lambda *args: self.loop.call_soon_threadsafe(callback, *args)

    def _events(self, events: list[StreamEvent]) -> None:
        for event in events:
            if event.type == "final" and (latency := self.clock.since(event.voiced_end)) is not None:
                self.server.metrics.final_latency.observe(latency)
            self.outbox.put_nowait(event.to_json())

    def _error(self, message: str) -> None:
        self.server.metrics.error("engine")
        self.outbox.put_nowait(protocol.error(message))

    def _closed(self) -> None:
        self.open = False
        # Without a finish of the session's own, the scheduler closes a stream only when it stops.
        self.outbox.put_nowait(self.closing or SHUTTING_DOWN)


def run(scheduler: StreamScheduler, options: ServeOptions) -> int:
    """Serves until SIGINT or SIGTERM, then sends the finals already due and exits."""
    asyncio.run(_serve_until_signal(StreamServer(scheduler, options)))
    return 0


async def _serve_until_signal(server: StreamServer) -> None:
    await server.start()
    print(f"edge-asr: serving {server.url} (metrics at /metrics); Ctrl-C stops", file=sys.stderr, flush=True)
    loop, stop = asyncio.get_running_loop(), asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    print("edge-asr: stopping: sending the finals due (signal again to stop at once)", file=sys.stderr, flush=True)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, server.abort)
    await server.shutdown()
