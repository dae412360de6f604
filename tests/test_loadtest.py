"""`edge-asr loadtest` against a fake in-process server that speaks the `edge-asr serve` protocol, so that
the latencies it must report are known."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from edge_asr.benchmarks import loadtest
from edge_asr.benchmarks.engine_split import engine_split, metrics_url, parse_engine_counters
from edge_asr.benchmarks.loadtest import ServerPlan, find_max, main
from edge_asr.models.wer import normalise
from edge_asr.runtime.audio import SAMPLE_RATE

pytest.importorskip("websockets")


class FakeServer:
    """Reads a stream's audio until `end`, waits delay(connection number, most connections open at once),
    sends one final whose speech ended lead_s before the audio did, then `closed` after closed_delay_s."""

    def __init__(self, delay: Callable[[int, int], float] = lambda number, peak: 0.0, lead_s: float = 0.0,
                 closed_delay_s: float = 0.0, text: str = "hello world", refuse: str | None = None,
                 token: str | None = None):
        self.delay, self.lead_s, self.closed_delay_s, self.text = delay, lead_s, closed_delay_s, text
        self.refuse, self.token = refuse, token
        self.connections = -1  # the loadtest's unmeasured warm-up stream is connection -1: trials count from 0
        self.open = self.peak = 0

    def check(self, connection, request):
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return connection.respond(401, "bad token\n")
        return None

    async def handle(self, ws) -> None:
        if self.refuse:  # as `edge-asr serve` refuses: the closed event, then code 1013
            await ws.send(json.dumps({"type": "closed", "reason": self.refuse}))
            await ws.close(1013, self.refuse)
            return
        number, self.connections, self.open = self.connections, self.connections + 1, self.open + 1
        self.peak = max(self.peak, self.open)
        try:
            await ws.send(json.dumps({"type": "ready", "stream": number, "sample_rate": SAMPLE_RATE,
                                      "format": "s16le"}))
            samples = 0
            async for message in ws:
                if isinstance(message, bytes):
                    samples += len(message) // 2
                elif json.loads(message)["type"] == "end":
                    break
            await asyncio.sleep(self.delay(number, self.peak))
            speech_end = samples / SAMPLE_RATE - self.lead_s
            await ws.send(json.dumps({"type": "final", "start": 0.0, "end": speech_end, "text": self.text,
                                      "speech_end": speech_end}))
            await asyncio.sleep(self.closed_delay_s)
            await ws.send(json.dumps({"type": "closed", "reason": "end of audio"}))
        finally:
            self.open -= 1
            if self.open == 0:  # a trial is over: the next one counts afresh
                self.peak = 0


@pytest.fixture(autouse=True)
def short_warm_up(monkeypatch):
    monkeypatch.setattr(loadtest, "WARM_UP_S", 0.5)


@pytest.fixture
def serve():
    """serve(FakeServer) -> its URL; the server runs on an event loop of its own thread."""
    from websockets.asyncio.server import serve as ws_serve

    running = []

    def start(fake: FakeServer) -> str:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()

        async def opened():
            return await ws_serve(fake.handle, "127.0.0.1", 0, process_request=fake.check)

        server = asyncio.run_coroutine_threadsafe(opened(), loop).result(5)
        running.append((loop, thread, server))
        return f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"

    yield start
    for loop, thread, server in running:
        async def closed(server=server):
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(closed(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


@pytest.fixture
def clips(tmp_path) -> Path:
    """One 0.5 s tone with a reference: a stream plays it and 1.5 s of faint noise, 2 s in all."""
    folder = tmp_path / "clips"
    folder.mkdir()
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE)
    sf.write(folder / "a.wav", tone.astype(np.float32), SAMPLE_RATE)
    (folder / "references.tsv").write_text("a\thello there world\n")
    return folder


def loadtest_json(tmp_path: Path, *argv: str) -> dict:
    out = tmp_path / "loadtest.json"
    assert main([*argv, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_latency_wer_and_fairness(tmp_path, serve, clips, capsys):
    url = serve(FakeServer(delay=lambda number, peak: 0.2, lead_s=0.3))
    trial = loadtest_json(tmp_path, "--url", url, "--streams", "3", "--input", str(clips))["trials"][0]
    for stream in trial["per_stream"]:
        assert stream["latency"]["values_s"] == [pytest.approx(0.5, abs=0.1)]
        assert stream["audio_s"] == pytest.approx(2.0) and stream["closed_after_s"] < 0.5
        assert stream["kept_up"] and stream["client_lag_s"] < 0.2
    assert trial["wer"] == pytest.approx(100 / 3)  # "hello world" against "hello there world"
    assert trial["jain_mean_latency"] == pytest.approx(1.0, abs=0.01)
    assert (trial["kept_up"], trial["client_behind"], trial["errors"], trial["passes"]) == (3, 0, 0, True)
    assert "| 3 | 3/3 | 0 | 3 |" in capsys.readouterr().out


def test_p90_is_over_all_finals_and_fairness_sees_the_spread(tmp_path, serve, clips):
    url = serve(FakeServer(delay=lambda number, peak: 0.2 + 0.1 * number))
    trial = loadtest_json(tmp_path, "--url", url, "--streams", "4", "--input", str(clips))["trials"][0]
    values = sorted(trial["latency"]["values_s"])
    assert values == [pytest.approx(x, abs=0.08) for x in (0.2, 0.3, 0.4, 0.5)]
    assert trial["latency"]["p90_s"] == pytest.approx(np.percentile(values, 90))
    assert trial["worst_stream_p90_s"] == pytest.approx(values[-1])
    assert trial["p90_max_over_min"] == pytest.approx(2.5, rel=0.3)
    assert trial["jain_mean_latency"] == pytest.approx(1.96 / (4 * 0.54), abs=0.03)


@pytest.mark.slow
def test_a_late_closed_event_means_the_stream_did_not_keep_up(tmp_path, serve, clips):
    url = serve(FakeServer(closed_delay_s=3.0))
    trial = loadtest_json(tmp_path, "--url", url, "--input", str(clips), "--seconds", "1")["trials"][0]
    assert trial["per_stream"][0]["closed_after_s"] == pytest.approx(3.0, abs=0.3)
    assert (trial["kept_up"], trial["client_behind"], trial["passes"]) == (0, 0, False)
    assert trial["failures"] == ["1/1 streams did not keep up"]
    assert trial["wer"] is None  # cut by --seconds


@pytest.mark.slow
def test_find_max_against_latency_that_grows_with_the_streams(tmp_path, serve, clips, monkeypatch, capsys):
    monkeypatch.setattr(loadtest, "STAGGER_S", 0.2)  # every stream is connected before the first one ends
    url = serve(FakeServer(delay=lambda number, peak: 0.15 * peak))
    doc = loadtest_json(tmp_path, "--url", url, "--input", str(clips), "--seconds", "1", "--find-max")
    assert [t["streams"] for t in doc["trials"]] == [1, 2, 4, 8, 6, 7]
    assert doc["find_max"]["streams"] == 6
    captured = capsys.readouterr()
    assert "kept up: **6** (7: p90 1.0" in captured.out
    assert captured.err.startswith("loadtest: warming the server up with one stream of 0.5 s (not measured)")
    assert len([line for line in captured.err.splitlines() if line.startswith("loadtest: ")]) == 7


@pytest.mark.parametrize("passing, trials, found", [
    (lambda n: n <= 40, [1, 2, 4, 8, 16, 32], 32),
    (lambda n: n <= 5, [1, 2, 4, 8, 6, 5], 5),
    (lambda n: False, [1], 0),
])
def test_find_max_doubles_then_bisects(passing, trials, found):
    tried, answer = find_max(lambda n: SimpleNamespace(streams=n, passes=passing(n)), 32)
    assert ([t.streams for t in tried], answer) == (trials, found)


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_errors_are_one_sentence(serve, clips, capsys):
    port = refused_port()
    cases = [
        ([f"--url=ws://localhost:{port}/"], f"no edge-asr server at ws://localhost:{port}/: connection refused."),
        (["--url", serve(FakeServer(refuse="server full: 1 streams"))],
         "refused stream 1 (server full: 1 streams); run fewer --streams or start it with a larger --max-streams."),
        (["--url", serve(FakeServer(token="secret")), "--token", "wrong"],
         "refused the connection (HTTP 401); pass --token or set EDGE_ASR_TOKEN."),
    ]
    for argv, message in cases:
        assert main([*argv, "--input", str(clips), "--seconds", "0.5"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("edge-asr: ") and err[-1].endswith(message)


def test_the_token_comes_from_the_environment(tmp_path, serve, clips, monkeypatch):
    monkeypatch.setenv("EDGE_ASR_TOKEN", "secret")
    url = serve(FakeServer(token="secret"))
    assert loadtest_json(tmp_path, "--url", url, "--input", str(clips), "--seconds", "0.5")["trials"][0]["passes"]


def test_server_options_reach_the_server_and_are_said_ignored_with_a_url(tmp_path, serve, clips, capsys):
    plan = ServerPlan(bundle="B", threads=2, workers=3, partial_interval=0.0)
    assert plan.options() == ["--bundle", "B", "--threads", "2", "--workers", "3", "--partial-interval", "0.0"]
    url = serve(FakeServer())
    doc = loadtest_json(tmp_path, "--url", url, "--input", str(clips), "--seconds", "0.5", "--partial-interval", "0")
    assert "--partial-interval ignored: the server at" in capsys.readouterr().err
    assert doc["settings"]["partial_interval"] is None  # a running server's own settings are unknown here


def test_a_server_child_that_dies_at_start_up_says_why(tmp_path, clips, capsys):
    assert main(["--bundle", str(tmp_path / "no-bundle"), "--input", str(clips)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("edge-asr: edge-asr serve stopped at start-up (exit status ")
    assert len(err.split("): ", 1)[1]) > 0  # its last stderr line


@pytest.mark.slow
def test_a_server_started_here_serves_the_trial(tmp_path, tiny_bundle, jfk_wav):
    """No --url: `edge-asr serve` starts on a port of its own choosing, JFK's first 4 s go through it."""
    folder = tmp_path / "jfk"
    folder.mkdir()
    (folder / "jfk.wav").symlink_to(jfk_wav)
    doc = loadtest_json(tmp_path, "--bundle", str(tiny_bundle), "--threads", "2", "--input", str(folder),
                        "--seconds", "4", "--partial-interval", "0")
    trial = doc["trials"][0]
    assert trial["finals"] >= 1 and trial["kept_up"] == 1 and trial["errors"] == 0
    assert trial["partials"] == 0 and doc["settings"]["partial_interval"] == 0  # a finals-only server, as asked
    # The server's /metrics, read before and after: its engine encoded, prompted and stepped in the trial.
    engine = trial["engine"]
    assert min(engine["calls"].values()) >= 1 and engine["rows_per_step"] >= 1
    assert sum(engine["share"].values()) == pytest.approx(1.0) and 0 < engine["busy"] < 2


@pytest.mark.slow
def test_a_stream_alone_through_edge_asr_stream_gets_the_words_it_gets_alone_from_the_server(tmp_path,
                                                                                            tiny_fp32_bundle, jfk_wav):
    """--alone's premise: `edge-asr stream` with the server's options gives a stream the words that the server
    gives it when it is the only stream (one stream, real-time pace, partials on: fp32, where drafts are exact)."""
    folder = tmp_path / "jfk"
    folder.mkdir()
    (folder / "jfk.wav").symlink_to(jfk_wav)
    (folder / "references.tsv").write_text(
        "jfk\tAnd so my fellow Americans, ask not what your country can do for you, ask what you can do for your "
        "country.\n")
    doc = loadtest_json(tmp_path, "--bundle", str(tiny_fp32_bundle), "--threads", "2", "--input", str(folder),
                        "--workers", "2", "--alone")
    trial = doc["trials"][0]
    (stream,) = trial["per_stream"]
    assert "fellow Americans" in stream["text_alone"]
    assert normalise(stream["text_alone"]) == normalise(stream["text"])
    assert trial["wer_against_alone"] == stream["wer_against_alone"] == 0.0
    assert trial["wer_alone"] == pytest.approx(trial["wer"])


def test_streams_are_judged_against_their_own_words_alone():
    runs = [loadtest.StreamRun(0, 2.0, "red green blue gold", latencies=[0.5], texts=["red green", "blue grey"]),
            loadtest.StreamRun(1, 2.0, "cat dog", latencies=[0.5], texts=["cat dog"])]
    trial = loadtest.trial_figures(runs, 1.0, None)
    (judged,) = loadtest.against_alone([trial], ["red green blue gold", "cat cow"])
    assert trial.wer == pytest.approx(100 / 6) and judged.wer == trial.wer  # under load: 1 error in 6 words
    assert judged.wer_alone == pytest.approx(100 / 6)  # alone: "cow" for "dog"
    # Under load against alone: "grey" for "gold" and "dog" for "cow": 2 of the alone words' 6.
    assert judged.wer_against_alone == pytest.approx(100 * 2 / 6)
    assert [row.wer_against_alone for row in judged.per_stream] == [pytest.approx(25.0), pytest.approx(50.0)]
    assert [row.text_alone for row in judged.per_stream] == ["red green blue gold", "cat cow"]


def test_alone_uses_the_servers_options_but_not_its_workers_and_needs_the_server_here(clips, capsys):
    plan = ServerPlan(model="tiny.en-adaptive", threads=2, workers=3, partial_interval=0.5)
    assert plan.options(server=False) == ["--model", "tiny.en-adaptive", "--threads", "2", "--partial-interval",
                                          "0.5"]
    assert plan.options()[-4:] == ["--workers", "3", "--partial-interval", "0.5"]  # the server's own keep them
    assert main(["--url", "ws://127.0.0.1:9/", "--input", str(clips), "--alone"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-asr: --alone runs each stream through `edge-asr stream`") and "\n" not in err


def test_a_failed_alone_run_keeps_the_trials(tmp_path, serve, clips, monkeypatch, capsys):
    """--alone comes after minutes of trials: if `edge-asr stream` fails, the trials are still written, and the
    exit status says that what was asked did not all happen."""
    from contextlib import contextmanager

    from edge_asr.runtime.errors import EdgeAsrError

    url = serve(FakeServer())

    @contextmanager
    def fake_server(plan, max_streams):
        yield url

    def failing(streams, options, say=None):
        raise EdgeAsrError("stream 1 alone: edge-asr stream failed (exit status 1): no such bundle.")

    monkeypatch.setattr(loadtest, "_server", fake_server)
    monkeypatch.setattr(loadtest, "alone_texts", failing)
    out = tmp_path / "loadtest.json"
    assert main(["--input", str(clips), "--streams", "2", "--alone", "--json", str(out)]) == 1
    doc = json.loads(out.read_text())
    assert doc["trials"][0]["streams"] == 2 and doc["trials"][0]["wer_alone"] is None
    assert doc["alone_error"].startswith("stream 1 alone: edge-asr stream failed")
    assert "The trials are reported without the words alone." in capsys.readouterr().err


def test_finals_text_joins_the_finals_of_stream_jsonl():
    from edge_asr.benchmarks.alone_words import finals_text

    jsonl = "\n".join(json.dumps(e) for e in [{"type": "partial", "text": "and so"},
                                                {"type": "final", "text": "And so my fellow Americans."},
                                                {"type": "final", "text": ""}, {"type": "final", "text": "Ask not!"}])
    assert finals_text(jsonl + "\n") == "And so my fellow Americans. Ask not!"


def test_engine_split_from_two_scrapes():
    exposition = '''# HELP edge_asr_engine_seconds_total Engine time, by kind of call.
edge_asr_engine_seconds_total{op="encode"} %s
edge_asr_engine_seconds_total{op="prompt"} 1.0
edge_asr_engine_seconds_total{op="step"} %s
edge_asr_engine_calls_total{op="encode"} 10.0
edge_asr_engine_calls_total{op="prompt"} 10.0
edge_asr_engine_calls_total{op="step"} %s
edge_asr_engine_rows_total{op="encode"} 10.0
edge_asr_engine_rows_total{op="prompt"} 10.0
edge_asr_engine_rows_total{op="step"} %s
edge_asr_active_streams 2.0
'''
    before = parse_engine_counters(exposition % (2.0, 1.0, 100.0, 100.0))
    after = parse_engine_counters(exposition % (8.0, 5.0, 150.0, 300.0))
    assert before["step"] == {"seconds": 1.0, "calls": 100.0, "rows": 100.0}
    split = engine_split(before, after, wall_s=20.0)
    assert split.seconds == {"encode": 6.0, "prompt": 0.0, "step": 4.0}
    assert split.share["encode"] == pytest.approx(0.6) and split.busy == pytest.approx(0.5)
    assert split.rows_per_step == 4.0 and split.ms_per_step_row == pytest.approx(20.0)
    assert engine_split(None, after, 20.0) is None and parse_engine_counters("edge_asr_active_streams 2.0") == {}
    assert metrics_url("ws://127.0.0.1:8765/") == "http://127.0.0.1:8765/metrics"
    assert metrics_url("wss://asr.example:443/") == "https://asr.example:443/metrics"
