"""Word timestamps: openai-whisper's algorithm on the bundle's alignment graph, held against openai-whisper itself."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from conftest import run_cli
from edge_asr.models.clips import developer_clips
from edge_asr.runtime.audio import load_audio
from edge_asr.runtime.formats import SubtitleLayout, render
from edge_asr.runtime.transcript import Segment, Transcript, Word
from edge_asr.runtime.word_timing import dtw, median_filter

# openai-whisper's and ours on the same fp32 weights, in seconds: one encoder position is 0.02 s. Measured: 0.0 on
# all 92 words of the developer clips. int8 against fp32: the same 92 words, at most 0.08 s apart (mean 0.011).
TOLERANCE_S = 0.02
INT8_TOLERANCE_S = 0.2


def reference_dtw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """openai-whisper's dtw_cpu and backtrace, cell by cell (timing.py, without numba)."""
    n, m = x.shape
    cost = np.ones((n + 1, m + 1), dtype=np.float32) * np.inf
    trace = -np.ones((n + 1, m + 1), dtype=np.float32)
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = x[i - 1, j - 1] + c
            trace[i, j] = t
    i, j = n, m
    trace[0, :], trace[:, 0] = 2, 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        i, j = (i - 1, j - 1) if trace[i, j] == 0 else (i - 1, j) if trace[i, j] == 1 else (i, j - 1)
    return tuple(np.array(path[::-1]).T)


@pytest.mark.parametrize("seed", range(4))
def test_dtw_takes_openais_path_ties_included(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((7, 40)) if seed % 2 else rng.integers(-2, 3, (9, 30)).astype(np.float64)  # ties
    for ours, theirs in zip(dtw(x), reference_dtw(x), strict=True):
        assert np.array_equal(ours, theirs)


def test_median_filter_is_a_running_median_with_reflected_edges():
    x = np.random.default_rng(0).standard_normal((2, 3, 20)).astype(np.float32)
    padded = np.pad(x, [(0, 0), (0, 0), (3, 3)], mode="reflect")
    expected = np.stack([np.median(padded[..., i : i + 7], axis=-1) for i in range(20)], axis=-1)
    assert np.allclose(median_filter(x, 7), expected)


def openai_whisper_model(checkpoint):
    import torch
    import whisper.model

    dims = checkpoint.dims
    model = whisper.model.Whisper(whisper.model.ModelDimensions(
        n_mels=dims.n_mels, n_audio_ctx=dims.n_audio_ctx, n_audio_state=dims.n_audio_state,
        n_audio_head=dims.n_audio_head, n_audio_layer=dims.n_audio_layer, n_vocab=dims.n_vocab,
        n_text_ctx=dims.n_text_ctx, n_text_state=dims.n_text_state, n_text_head=dims.n_text_head,
        n_text_layer=dims.n_text_layer))
    model.load_state_dict({name: torch.tensor(np.asarray(t), dtype=torch.float32) for name, t in checkpoint.tensors.items()})
    heads = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
    for layer, head in checkpoint.alignment_heads:
        heads[layer, head] = True
    model.register_buffer("alignment_heads", heads.to_sparse(), persistent=False)
    return model.eval()


def openai_words(model, audio: np.ndarray, windows) -> list[dict]:
    """openai-whisper's add_word_timestamps over our windows and segments (tokens and times before the words)."""
    import torch
    from whisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram, pad_or_trim
    from whisper.timing import add_word_timestamps
    from whisper.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(multilingual=False)
    mel = log_mel_spectrogram(torch.from_numpy(audio), padding=N_SAMPLES)
    frames, words, last = mel.shape[-1] - N_FRAMES, [], 0.0
    for window in windows:
        if not window.segments:
            continue
        seek = round(window.start * 100)
        count = min(N_FRAMES, frames - seek)
        segments = [{"tokens": list(s.tokens), "start": s.start, "end": s.end, "seek": seek} for s in window.segments]
        add_word_timestamps(segments=segments, model=model, tokenizer=tokenizer, num_frames=count,
                            mel=pad_or_trim(mel[:, seek : seek + count], N_FRAMES), last_speech_timestamp=last)
        last = segments[-1]["end"]
        words += [word for segment in segments for word in segment["words"]]
    return words


@pytest.fixture(scope="module")
def developer_audio() -> np.ndarray:
    """The developer clips read one after another (two 30 s windows and more when LibriVox is installed)."""
    return np.concatenate([load_audio(clip.path) for clip in developer_clips()])


def test_word_times_equal_openai_whispers_on_the_same_weights(tiny_fp32_bundle, developer_audio):
    if importlib.util.find_spec("whisper") is None or importlib.util.find_spec("numba") is None:
        pytest.skip("needs openai-whisper: pip install --no-deps openai-whisper==20250625 (and '.[dev]')")
    from edge_asr.models.zoo import resolve_model
    from edge_asr.runtime.transcriber import Transcriber

    transcriber = Transcriber(tiny_fp32_bundle, threads=2)
    plain = list(transcriber.windows(developer_audio, transcriber.options()))
    timed = list(transcriber.windows(developer_audio, transcriber.options(word_timestamps=True)))
    assert [s.text for w in timed for s in w.segments] == [s.text for w in plain for s in w.segments]
    ours = [word for window in timed for segment in window.segments for word in segment.words]
    theirs = openai_words(openai_whisper_model(resolve_model("tiny.en")), developer_audio, plain)
    assert [w.word for w in ours] == [w["word"] for w in theirs]
    assert len(ours) >= 22
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.start == pytest.approx(reference["start"], abs=TOLERANCE_S), (mine, reference)
        assert mine.end == pytest.approx(reference["end"], abs=TOLERANCE_S), (mine, reference)
        assert mine.probability == pytest.approx(reference["probability"], abs=1e-3)


def test_int8_words_stay_near_fp32s(tiny_bundle, tiny_fp32_bundle, jfk_wav):
    from edge_asr.runtime.transcriber import Transcriber

    words = {}
    for name, bundle in (("int8", tiny_bundle), ("fp32", tiny_fp32_bundle)):
        transcriber = Transcriber(bundle, threads=2)
        transcript = transcriber.transcribe(jfk_wav, transcriber.options(word_timestamps=True))
        words[name] = [w for s in transcript.segments for w in s.words]
    bare = lambda word: word.word.strip(" .,?!").lower()  # noqa: E731  (int8 may move punctuation)
    assert [bare(w) for w in words["int8"]] == [bare(w) for w in words["fp32"]]
    starts = [abs(q.start - e.start) for q, e in zip(words["int8"], words["fp32"], strict=True)]
    ends = [abs(q.end - e.end) for q, e in zip(words["int8"], words["fp32"], strict=True)]
    # A segment's last word ends where its segment does (openai's rule), and int8 may cut segments elsewhere
    # (JFK's "you": 7.58 s against 8.06 s): ends are held by their median, starts one by one.
    assert max(starts) <= INT8_TOLERANCE_S and np.median(ends) <= TOLERANCE_S, (starts, ends)
    assert all(a.end <= b.start + 1e-9 for a, b in zip(words["int8"], words["int8"][1:])), "words overlap"


def test_json_carries_words_and_subtitles_cut_at_words(tiny_bundle, jfk_wav):
    out = run_cli("transcribe", "--word-timestamps", "--format", "json", "--no-progress", "--bundle", tiny_bundle,
                  jfk_wav)
    assert out.returncode == 0, out.stderr
    segments = json.loads(out.stdout)["segments"]
    words = [w for s in segments for w in s["words"]]
    assert "".join(w["word"] for w in words).split() == " ".join(s["text"] for s in segments).split()
    assert all(set(w) == {"start", "end", "word", "probability"} and w["start"] <= w["end"] for w in words)
    out = run_cli("transcribe", "--word-timestamps", "--format", "srt", "--max-line-width", "20", "--max-line-count",
                  "2", "--no-progress", "--bundle", tiny_bundle, jfk_wav)
    assert out.returncode == 0, out.stderr
    cues = [cue.splitlines() for cue in out.stdout.strip().split("\n\n")]
    assert len(cues) > len(segments)
    assert all(len(cue) - 2 <= 2 and all(len(line) <= 20 for line in cue[2:]) for cue in cues), cues


def subtitled(words_per_segment: list[list[tuple[float, float, str]]]) -> Transcript:
    segments = [Segment(start=ws[0][0], end=ws[-1][1], text="".join(w for _, _, w in ws),
                        words=[Word(a, b, w, 0.9) for a, b, w in ws]) for ws in words_per_segment]
    return Transcript("x.wav", "en", 20.0, segments)


def test_word_cues_wrap_lines_break_after_pauses_and_keep_segments_without_a_line_count():
    transcript = subtitled([[(0.0, 0.5, " one"), (0.5, 1.0, " two"), (1.0, 1.5, " three")],
                            [(6.0, 6.5, " four"), (6.5, 7.0, " five")]])
    two_lines = render(transcript, "vtt", SubtitleLayout(max_line_width=9, max_line_count=2))
    assert two_lines == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\none two\nthree\n\n"
                         "00:00:06.000 --> 00:00:07.000\nfour five\n")  # the 4.5 s pause starts a cue
    one_line = render(transcript, "srt", SubtitleLayout(max_line_width=9, max_line_count=1))
    assert [cue.splitlines()[2:] for cue in one_line.strip().split("\n\n")] == [["one two"], ["three"], ["four five"]]
    by_segment = render(transcript, "srt", SubtitleLayout(max_line_width=9))
    assert [cue.splitlines()[2:] for cue in by_segment.strip().split("\n\n")] == [["one two", "three"], ["four five"]]


def test_word_timestamps_without_an_alignment_graph_is_one_sentence(tiny_bundle, jfk_wav, tmp_path):
    import shutil

    old = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / manifest["files"].pop("alignment")["path"]).unlink()
    (old / "manifest.json").write_text(json.dumps(manifest))
    out = run_cli("transcribe", "--word-timestamps", "--no-progress", "--bundle", old, jfk_wav)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1 and "alignment graph" in lines[0], out.stderr
    out = run_cli("transcribe", "--max-line-count", "2", "--no-progress", "--bundle", old, jfk_wav)
    assert out.returncode != 0 and "--word-timestamps" in out.stderr.strip().splitlines()[-1]


def test_stream_finals_carry_words_directly_and_through_the_engine_loop(tiny_bundle, vad_model, jfk_wav):
    """A final's words lie inside it, in stream time, whether its decoding runs alone or in the server's loop."""
    from edge_asr.runtime.decoding.calls import run_sync
    from edge_asr.runtime.serving.engine_loop import EngineLoop, Job
    from edge_asr.runtime.streaming.recognizer import StreamOptions, StreamRecognizer
    from edge_asr.runtime.streaming.vad import SileroVad
    from edge_asr.runtime.transcriber import Transcriber

    vads = [SileroVad(vad_model), SileroVad(vad_model)]
    transcriber = Transcriber(tiny_bundle, threads=2)
    audio = np.concatenate([np.zeros(16000 * 3, np.float32), load_audio(jfk_wav)])
    finals = {}
    for name, vad in zip(("alone", "loop"), vads, strict=True):
        recognizer = StreamRecognizer(transcriber.engine, transcriber.tokenizer, vad,
                                      transcriber.options(word_timestamps=True), StreamOptions(partial_interval_s=0))
        events = []
        for at in range(0, len(audio), 16000):
            steps = recognizer.push_steps(audio[at : at + 16000]) if name == "loop" else None
            if steps is None:
                events += recognizer.push(audio[at : at + 16000])
            else:
                job = Job(steps)
                EngineLoop(transcriber.engine).run([job])
                events += job.result
        events += recognizer.flush() if name == "alone" else run_sync(recognizer.flush_steps(), transcriber.engine)
        finals[name] = [e for e in events if e.type == "final"]
    for events in finals.values():
        assert events and all(e.words for e in events)
        for event in events:
            assert "".join(w.word for w in event.words).split() == event.text.split()
            assert event.start - 0.5 <= event.words[0].start and event.words[-1].end <= event.end + 0.5
        assert json.loads(events[0].to_json())["words"][0]["start"] >= 2.5  # after the 3 s of silence, in stream time
    assert [e.words for e in finals["loop"]] == [e.words for e in finals["alone"]]
