"""`edge-asr serve`: the protocol, the limits, the token, malformed messages, disconnects and shutdown
against a fake scheduler in this process; then one run of the real command on tiny.en."""
from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("websockets", reason="needs websockets (pip install -e '.[serve]')")
pytest.importorskip("prometheus_client", reason="needs prometheus-client (pip install -e '.[serve]')")

from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

from edge_asr.runtime.cli import build_parser  # noqa: E402
from edge_asr.runtime.engines.timed import OpTally  # noqa: E402
from edge_asr.runtime.serving.scheduler import CapacityError, SchedulerStats  # noqa: E402
from edge_asr.runtime.serving.serve_command import ServeOptions, serve_options  # noqa: E402
from edge_asr.runtime.serving.server import CLOSE_TIMEOUT_S, StreamServer  # noqa: E402
from edge_asr.runtime.streaming.events import StreamEvent  # noqa: E402

from conftest import run_cli  # noqa: E402

POISON = -32768  # a fake engine fails on audio that starts with this sample
TOKEN = "s3cret"


class FakeHandle:
    def __init__(self, scheduler: "FakeScheduler", stream_id: int, on_events, on_error, on_closed):
        self.scheduler, self.id = scheduler, stream_id
        self.on_events, self.on_error, self.on_closed = on_events, on_error, on_closed
        self.samples, self.finished, self.aborted = 0, False, False

    def push(self, samples: np.ndarray) -> bool:
        if self.scheduler.full or len(samples) > self.scheduler.queue_samples:  # never fits, as the real queue
            return False
        if len(samples) and samples[0] == POISON / 32768:
            self.scheduler.later(self.on_error, "transcription failed, the current utterance is lost: boom")
        else:
            self.samples += len(samples)
            self.scheduler.audio_seconds += len(samples) / 16000
        return True

    def finish(self) -> None:
        self.finished = True
        self.scheduler.later(self.flush)

    def abort(self) -> None:
        self.aborted = True
        self.scheduler.handles.discard(self)

    def flush(self) -> None:
        """On the worker: the final says how many samples the stream got."""
        if self.aborted:
            return
        self.scheduler.handles.discard(self)
        seconds = self.samples / 16000
        self.on_events([StreamEvent("final", 0.0, seconds, f"{self.samples} samples", voiced_end=seconds)])
        self.on_closed()


class FakeScheduler:
    """The StreamScheduler interface, with callbacks from a worker thread as the real one makes them."""

    def __init__(self, max_streams: int = 8):
        self.max_streams = max_streams
        self.handles: set[FakeHandle] = set()  # open
        self.opened: list[FakeHandle] = []
        self.full = False
        self.queue_samples = 10 * 16000  # a stream's queue holds 10 s, as the scheduler's
        self.audio_seconds = 0.0
        self._calls: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._run, daemon=True)

    def open_stream(self, on_events, on_error, on_closed) -> FakeHandle:
        if len(self.handles) >= self.max_streams:
            raise CapacityError(f"server full: {self.max_streams} streams")
        handle = FakeHandle(self, len(self.opened) + 1, on_events, on_error, on_closed)
        self.handles.add(handle)
        self.opened.append(handle)
        return handle

    def later(self, call, *args) -> None:
        self._calls.put(lambda: call(*args))

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        for handle in list(self.handles):
            self.later(handle.flush)
        self._calls.put(None)
        self._worker.join()

    def stats(self) -> SchedulerStats:
        # The fake engine spends a quarter of a second per second of audio, a third of it in 4-row steps.
        engine = {"encode": OpTally(1, 1, self.audio_seconds / 8), "prompt": OpTally(1, 1, self.audio_seconds / 24),
                  "step": OpTally(5, 20, self.audio_seconds / 12)}
        return SchedulerStats(len(self.handles), 0.0, self.audio_seconds / 4, self.audio_seconds, 0, 0, engine,
                              vad_calls=20, vad_windows=31)

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            call()


def pcm(samples: int, value: int = 1000) -> bytes:
    return np.full(samples, value, dtype="<i2").tobytes()


@contextlib.asynccontextmanager
async def running(scheduler: FakeScheduler | None = None, **options):
    server = StreamServer(scheduler or FakeScheduler(), ServeOptions(port=0, **options), gpu_memory_mb=lambda: None)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown()


@contextlib.asynccontextmanager
async def one_client(**options):
    """A server on a fake scheduler, and one client past its ready message."""
    scheduler = FakeScheduler()
    async with running(scheduler, **options) as server, connect(server.url) as ws:
        await receive(ws)
        yield server, scheduler, ws


def errors(server: StreamServer, kind: str) -> float:
    return server.metrics.registry.get_sample_value("edge_asr_request_errors_total", {"kind": kind})


async def receive(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def until_closed(ws) -> list[dict]:
    """The messages left, up to the end of the connection."""
    messages = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            messages.append(await receive(ws))
    return messages


async def eventually(condition, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def http_get(url: str, headers: dict | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def http_url(server: StreamServer, path: str) -> str:
    return server.url.replace("ws://", "http://").rstrip("/") + path


def test_ready_audio_and_end():
    async def scenario():
        async with running() as server, connect(server.url) as ws:
            assert await receive(ws) == {"type": "ready", "stream": 1, "sample_rate": 16000, "format": "s16le"}
            await ws.send(pcm(8000))
            await ws.send(pcm(4000))
            await ws.send(json.dumps({"type": "end"}))
            messages = await until_closed(ws)
            assert [m["type"] for m in messages] == ["final", "closed"]
            assert messages[0]["text"] == "12000 samples" and messages[0]["end"] == 0.75
            assert messages[1] == {"type": "closed", "reason": "end of stream"}
            assert ws.close_code == 1000

    asyncio.run(scenario())


def test_malformed_messages_get_an_error_and_the_stream_goes_on():
    async def scenario():
        async with one_client() as (server, _, ws):
            for message in ("not json", "[1, 2]", '{"type": "pause"}', b"\0\0\0"):
                await ws.send(message)
                error = await receive(ws)
                assert error["type"] == "error" and error["message"]
            assert "odd" in error["message"]
            await ws.send(pcm(1600))
            await ws.send('{"type": "end"}')
            assert (await receive(ws))["text"] == "1600 samples"
            assert errors(server, "malformed") == 4.0

    asyncio.run(scenario())


def test_message_too_big_closes_with_1009():
    async def scenario():
        async with one_client(max_message_bytes=1000) as (server, scheduler, ws):
            await ws.send(pcm(400))
            await ws.send(pcm(1000))
            await until_closed(ws)
            assert ws.close_code == 1009
            await eventually(lambda: scheduler.opened[0].aborted)
            assert errors(server, "too_big") == 1.0

    asyncio.run(scenario())


def test_token_in_header_or_query():
    async def scenario():
        async with running(token=TOKEN) as server:
            for headers, url in (({"Authorization": f"Bearer {TOKEN}"}, server.url), ({}, f"{server.url}?token={TOKEN}")):
                async with connect(url, additional_headers=headers) as ws:
                    assert (await receive(ws))["type"] == "ready"
            for headers, url in (({}, server.url), ({"Authorization": "Bearer wrong"}, server.url),
                                 ({}, f"{server.url}?token=wrong")):
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(url, additional_headers=headers):
                        pass
                assert refused.value.response.status_code == 401
            assert errors(server, "bad_token") == 3.0

    asyncio.run(scenario())


def test_metrics_need_the_token_beyond_loopback():
    async def scenario():
        async with running(host="0.0.0.0", token=TOKEN) as server:
            url = f"http://127.0.0.1:{server.url.rsplit(':', 1)[1].rstrip('/')}/metrics"
            assert (await asyncio.to_thread(http_get, url))[0] == 401
            status, _ = await asyncio.to_thread(http_get, url, {"Authorization": f"Bearer {TOKEN}"})
            assert status == 200

    asyncio.run(scenario())


def test_max_streams_refuses_with_1013():
    async def scenario():
        async with running(FakeScheduler(max_streams=1)) as server, connect(server.url) as first:
            await receive(first)
            async with connect(server.url) as second:
                assert await until_closed(second) == [{"type": "closed", "reason": "server full: 1 streams"}]
                assert second.close_code == 1013 and second.close_reason == "server full: 1 streams"
            await first.send('{"type": "end"}')
            assert (await receive(first))["type"] == "final"

    asyncio.run(scenario())


def test_idle_client_gets_its_finals_then_4000():
    async def scenario():
        async with one_client(idle_timeout_s=0.2) as (_, _, ws):
            await ws.send(pcm(320))
            messages = await until_closed(ws)
            assert messages == [messages[0], {"type": "closed", "reason": "idle for 0.2 s"}]
            assert messages[0]["text"] == "320 samples"
            assert ws.close_code == 4000

    asyncio.run(scenario())


def test_queue_full_too_long_closes_with_1013():
    async def scenario():
        async with one_client(backpressure_timeout_s=0.2) as (_, scheduler, ws):
            scheduler.full = True
            await ws.send(pcm(320))
            messages = await until_closed(ws)
            assert messages[-1]["reason"].startswith("server overloaded") and ws.close_code == 1013
            assert scheduler.opened[0].aborted

    asyncio.run(scenario())


def test_a_message_longer_than_the_queue_goes_in_as_it_drains():
    """11 s in one message (the JFK clip, within the 1 MiB limit) against a 10 s queue: all of it is heard."""
    async def scenario():
        async with one_client(backpressure_timeout_s=0.5) as (server, _, ws):
            await ws.send(pcm(11 * 16000))
            await ws.send(json.dumps({"type": "end"}))
            messages = await until_closed(ws)
            assert messages[0]["text"] == f"{11 * 16000} samples" and ws.close_code == 1000
            assert not errors(server, "backpressure")

    asyncio.run(scenario())


def test_disconnect_aborts_that_stream_only():
    async def scenario():
        scheduler = FakeScheduler()
        async with running(scheduler) as server, connect(server.url) as staying:
            await receive(staying)
            leaving = await connect(server.url)
            await receive(leaving)
            await leaving.send(pcm(1600))
            leaving.transport.abort()  # mid-utterance, without a closing handshake
            await eventually(lambda: scheduler.opened[1].aborted)
            await staying.send(pcm(800))
            await staying.send('{"type": "end"}')
            assert [m.get("text") for m in await until_closed(staying)] == ["800 samples", None]
            assert not scheduler.opened[0].aborted

    asyncio.run(scenario())


def test_engine_error_reaches_that_stream_only():
    async def scenario():
        async with running() as server, connect(server.url) as failing, connect(server.url) as other:
            await receive(failing)
            await receive(other)
            await failing.send(pcm(1600, POISON))
            error = await receive(failing)
            assert error["type"] == "error" and "transcription failed" in error["message"]
            for ws in (failing, other):
                await ws.send(pcm(800))
                await ws.send('{"type": "end"}')
                assert [m["type"] for m in await until_closed(ws)] == ["final", "closed"]
            assert errors(server, "engine") == 1.0

    asyncio.run(scenario())


def test_shutdown_sends_the_finals_due_then_1001():
    async def scenario():
        async with one_client() as (server, scheduler, ws):
            await ws.send(pcm(1600))
            await eventually(lambda: scheduler.opened[0].samples == 1600)
            url = server.url
            shutdown = asyncio.create_task(server.shutdown())
            messages = await until_closed(ws)
            await shutdown
            assert messages == [messages[0], {"type": "closed", "reason": "server shutting down"}]
            assert messages[0]["text"] == "1600 samples"
            assert ws.close_code == 1001
            with pytest.raises(OSError):
                async with connect(url):
                    pass

    asyncio.run(scenario())


def test_metrics_and_healthz():
    async def scenario():
        async with running(token=TOKEN) as server, connect(server.url, additional_headers={
                "Authorization": f"Bearer {TOKEN}"}) as ws:
            await receive(ws)
            await ws.send(pcm(16000))
            await ws.send('{"type": "end"}')
            await until_closed(ws)
            assert await asyncio.to_thread(http_get, http_url(server, "/healthz")) == (200, "ok\n")
            status, text = await asyncio.to_thread(http_get, http_url(server, "/metrics"))  # loopback: no token
            assert status == 200
            for name in ("edge_asr_final_latency_seconds_count 1.0", "edge_asr_active_streams 0.0",
                         "edge_asr_queue_depth_seconds 0.0", "edge_asr_real_time_factor 0.25",
                         'edge_asr_request_errors_total{kind="capacity"} 0.0',
                         'edge_asr_engine_calls_total{op="step"} 5.0', 'edge_asr_engine_rows_total{op="step"} 20.0',
                         'edge_asr_engine_seconds_total{op="encode"} 0.125', "edge_asr_vad_calls_total 20.0",
                         "edge_asr_vad_windows_total 31.0"):
                assert name in text
            assert "edge_asr_gpu_memory_bytes" not in text  # not on CUDA
            other = await asyncio.to_thread(http_get, http_url(server, "/other"), {"Authorization": f"Bearer {TOKEN}"})
            assert other[0] == 404

    asyncio.run(scenario())


def test_gpu_memory_shows_when_the_process_holds_some():
    async def scenario():
        server = StreamServer(FakeScheduler(), ServeOptions(port=0), gpu_memory_mb=lambda: 3.0)
        assert "edge_asr_gpu_memory_bytes 3.145728e+06" in server.metrics.render().decode()

    asyncio.run(scenario())


def test_non_loopback_without_token_is_refused_before_loading():
    started = time.monotonic()
    done = run_cli("serve", "--host", "0.0.0.0", "--model", "no-such-model", env={"EDGE_ASR_TOKEN": ""}, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "--token" in done.stderr and "--insecure" in done.stderr
    assert time.monotonic() - started < 30


def test_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("EDGE_ASR_TOKEN", TOKEN)
    options = serve_options(build_parser("serve").parse_args(["serve", "--host", "0.0.0.0"])).validate()
    assert options.token == TOKEN and not options.loopback
    assert ServeOptions(host="::1").validate().loopback


def test_serve_jfk_end_to_end(tiny_bundle, jfk_wav):
    import soundfile as sf

    proc = subprocess.Popen([sys.executable, "-m", "edge_asr.runtime.cli", "serve", "--bundle", str(tiny_bundle),
                             "--port", "0", "--max-streams", "2", "--threads", "2"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        url = served_url(proc)
        audio, rate = sf.read(jfk_wav, dtype="int16")
        assert rate == 16000 and audio.ndim == 1

        async def scenario() -> list[dict]:
            async with connect(url) as ws:
                await receive(ws)
                for start in range(0, len(audio), rate // 2):
                    await ws.send(audio[start:start + rate // 2].astype("<i2").tobytes())
                await ws.send('{"type": "end"}')
                return [json.loads(m) async for m in ws]

        messages = asyncio.run(asyncio.wait_for(scenario(), 120))
        text = " ".join(m["text"] for m in messages if m["type"] == "final")
        assert "ask not what your country can do for you" in re.sub(r"[^\w\s]", "", text.lower()), messages
        assert messages[-1] == {"type": "closed", "reason": "end of stream"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()


def served_url(proc: subprocess.Popen, timeout: float = 300) -> str:
    """The URL the server prints once it listens; its stderr is drained meanwhile so it never blocks."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(queue.Empty):
            seen.append(lines.get(timeout=1))
            if match := re.search(r"ws://\S+/", seen[-1]):
                return match.group(0)
    pytest.fail(f"the server did not start: {''.join(seen)}")


def test_arrival_clock_forgets_audio_no_final_can_reach():
    from edge_asr.runtime.serving.metrics import ARRIVAL_HORIZON_S, ArrivalClock

    clock = ArrivalClock()
    for _ in range(3000):  # 96 s of 32 ms messages and no final
        clock.arrived(512)
    assert len(clock._marks) <= ARRIVAL_HORIZON_S * 16000 // 512 + 2
    assert 0 <= clock.since(95.0) < 1.0  # recent audio still has its arrival time


def test_audio_sent_after_end_does_not_hold_up_the_close():
    """Messages after `end` are read and dropped: before, they filled the connection's queue, the client's close
    reply waited behind them, and the close took the 10 s of websockets' close timeout."""
    async def scenario():
        async with one_client() as (server, scheduler, ws):
            await ws.send(pcm(1600))
            await ws.send(json.dumps({"type": "end"}))
            for _ in range(64):
                await ws.send(pcm(1600))
            messages = await until_closed(ws)  # each message within 5 s, the close included
            assert messages[-1] == {"type": "closed", "reason": "end of stream"}
            assert ws.close_code == 1000
            assert scheduler.opened[0].samples == 1600

    asyncio.run(scenario())


def test_shutdown_does_not_wait_on_a_client_that_no_longer_answers():
    """A half-open connection (a client gone without closing, here one that stops reading) cannot hold up the
    shutdown for websockets' 10 s close timeout: the server gives a close handshake SHUTDOWN_CLOSE_S."""
    async def scenario():
        async with one_client() as (server, scheduler, ws):
            ws.transport.pause_reading()
            await asyncio.wait_for(server.shutdown(), 5)
            ws.transport.abort()  # or the client's own close would wait for a reply it cannot read

    asyncio.run(scenario())


def test_a_second_signal_drops_the_connections_at_once():
    """serve's answer to a second SIGINT or SIGTERM during a shutdown: abort(), which drops each connection
    without waiting for its close handshake (CLOSE_TIMEOUT_S)."""
    async def scenario():
        async with one_client() as (server, scheduler, ws):
            ws.transport.pause_reading()
            shutdown = asyncio.create_task(server.shutdown())
            await asyncio.sleep(0.1)
            server.abort()
            await asyncio.wait_for(shutdown, CLOSE_TIMEOUT_S / 2)  # without abort(), CLOSE_TIMEOUT_S
            assert not server.sessions
            ws.transport.abort()

    asyncio.run(scenario())
