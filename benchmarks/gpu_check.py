"""Every check of the PyTorch GPU engine in one prepared command, for a machine with an NVIDIA GPU.

Two steps, because such a machine may have no registry access and little room to carry files:

    python3 -m edge_asr.benchmarks.gpu_check pack DIR          # here: what the GPU machine needs, < 64 MiB
    python3 -m edge_asr.benchmarks.gpu_check run DIR [--out OUT] [--parts tests,transcribe,curve,load]

``pack`` writes tiny.en's weights compactly (the token embedding in int8 with one scale per row, the rest
in fp16, the encoder's fixed sinusoids left out), a bundle manifest to rebuild a `--target cuda` bundle
from them, the Silero VAD model and the developer clips. ``run`` rebuilds the bundle and:
- tests: pytest on the GPU tests (CUDA engine against the CPU, pools and graphs, page-locked buffers, NVML,
  CUDA training);
- transcribe: the developer clips on the GPU in fp16 against the same weights on the CPU in fp32 (the
  words must agree), with each clip's time;
- curve: a decoder step through the pool at batch 1 to 64, replayed CUDA graphs against eager calls, and
  the encoder on 30 s and 10 s windows at batch 1 to 16 (CUDA events);
- load: `edge-asr loadtest --find-max` against `edge-asr serve` on the GPU bundle, one utterance at a time
  (--workers 1) against the engine loop batching up to 64 streams' calls (--workers 64).
Figures print as they come and land in OUT/gpu_check.json. The machine also needs the wheels of
`../shared/gpu/fetch_wheels.sh threadpoolctl==3.8.0` installed (the runtime's requirements it lacks).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PARTS = ("tests", "transcribe", "curve", "load")
WEIGHTS = "tiny.en-compact.npz"


def pack(out: Path) -> None:
    """What `run` needs on a machine without the zoo's packages or a registry."""
    import silero_vad

    from edge_asr.models.clips import developer_clips
    from edge_asr.compile.bundle_writer import compile_bundle

    out.mkdir(parents=True, exist_ok=True)
    bundle = compile_bundle("tiny.en", "fp16", out / "bundle-template", target="cuda", log=lambda line: None)
    import torch

    state = torch.load(bundle / "model.pt", weights_only=True)
    arrays = {}
    for name, tensor in state.items():
        if name == "encoder.positional_embedding":
            continue  # sinusoids, made again by the model
        values = tensor.float().numpy()
        if name == "decoder.token_embedding.weight":
            scale = np.abs(values).max(axis=1, keepdims=True) / 127
            arrays[name + ".int8"] = np.round(values / scale).astype(np.int8)
            arrays[name + ".scale"] = scale.astype(np.float32)
        else:
            arrays[name] = values.astype(np.float16)
    np.savez_compressed(out / WEIGHTS, **arrays)
    shutil.copy(bundle / "manifest.json", out / "manifest.json")
    shutil.copy(bundle / "tokenizer.json", out / "tokenizer.json")
    shutil.rmtree(bundle)
    clips = out / "clips"
    clips.mkdir(exist_ok=True)
    for clip in developer_clips():
        shutil.copy(clip.path, clips / f"{clip.name}.wav")
    (clips / "references.tsv").write_text("".join(f"{c.name}\t{c.reference}\n" for c in developer_clips()))
    shutil.copy(Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx", out / "silero_vad.onnx")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"packed {out}: {size / 2**20:.1f} MiB")


def unpack(packed: Path, bundle: Path) -> Path:
    """A `--target cuda` bundle rebuilt from the packed weights (the embedding dequantized from int8)."""
    import torch

    from edge_asr.models.checkpoint import sinusoids

    data = np.load(packed / WEIGHTS)
    state = {}
    for name in data.files:
        if name.endswith(".scale"):
            continue
        if name.endswith(".int8"):
            base = name[: -len(".int8")]
            state[base] = torch.from_numpy(data[name].astype(np.float32) * data[base + ".scale"]).half()
        else:
            state[name] = torch.from_numpy(data[name])
    manifest = json.loads((packed / "manifest.json").read_text())
    dims = manifest["model"]["dims"]
    state["encoder.positional_embedding"] = torch.from_numpy(sinusoids(dims["n_audio_ctx"], dims["n_audio_state"])).half()
    bundle.mkdir(parents=True, exist_ok=True)
    torch.save(state, bundle / "model.pt")
    shutil.copy(packed / "tokenizer.json", bundle / "tokenizer.json")
    for role, entry in manifest["files"].items():
        entry["sha256"] = hashlib.sha256((bundle / entry["path"]).read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return bundle


def run_tests(out: Path) -> dict:
    tests = ["tests/test_torch_engine.py", "tests/test_mel_stream.py", "tests/test_power.py", "tests/test_distill.py"]
    tests = [t for t in tests if Path(t).is_file()]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests, "-k",
                           "cuda or gpu or pinned or nvml or graph or pool"], capture_output=True, text=True)
    tail = done.stdout.strip().splitlines()[-15:]
    print("\n".join(tail))
    return {"returncode": done.returncode, "tail": tail}


def transcribe_clips(bundle: Path, clips: Path) -> dict:
    """The clips on the GPU (fp16) and the CPU (fp32, the same weights): texts, times, agreement."""
    import torch

    from edge_asr.models.clips import folder_clips
    from edge_asr.models.wer import corpus_wer
    from edge_asr.runtime.transcriber import Transcriber

    texts: dict[str, dict[str, str]] = {}
    seconds: dict[str, float] = {}
    for device in ("cuda", "cpu"):
        os.environ["EDGE_ASR_DEVICE"] = device
        transcriber = Transcriber(bundle, threads=8)
        transcriber.transcribe(clips / "jfk.wav")  # warm-up: kernels, cuBLAS handles
        started = time.perf_counter()
        texts[device] = {c.name: transcriber.transcribe(c.path).text for c in folder_clips(clips)}
        if device == "cuda":
            torch.cuda.synchronize()
        seconds[device] = time.perf_counter() - started
    os.environ.pop("EDGE_ASR_DEVICE")
    references = {c.name: c.reference for c in folder_clips(clips)}
    result = {"seconds": seconds, "texts": texts, "same_text": texts["cuda"] == texts["cpu"],
              "wer": {d: corpus_wer([(references[n], t) for n, t in texts[d].items()]) for d in texts}}
    for name in texts["cuda"]:
        mark = "same" if texts["cuda"][name] == texts["cpu"][name] else f"CPU: {texts['cpu'][name]!r}"
        print(f"  {name}: {texts['cuda'][name]!r} ({mark})")
    print(f"transcribe: GPU {seconds['cuda']:.2f} s, CPU {seconds['cpu']:.2f} s for the clips; WER GPU "
          f"{result['wer']['cuda']:.2f} %, CPU {result['wer']['cpu']:.2f} %; same text: {result['same_text']}")
    return result


def batch_curve(bundle: Path) -> dict:
    """ms per decoder step through a pool (graph replay and eager) and per encoder call, by batch."""
    import torch

    from edge_asr.runtime.bundle import load_bundle
    from edge_asr.runtime.engines.torch_engine import load_torch_engine

    engine = load_torch_engine(load_bundle(bundle), threads=8)
    dims = engine.dims

    def timed(call, repeats: int = 50) -> float:
        for _ in range(3):
            call()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            call()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / repeats

    curve: dict = {"step_graph_ms": {}, "step_eager_ms": {}, "encoder_30s_ms": {}, "encoder_10s_ms": {}}
    audio = engine.encode(np.zeros((1, dims.n_mels, 3000), np.float32))
    for graphs in (True, False):
        engine.graphs = graphs
        pool = engine.new_pool(audio, 64)
        for batch in (1, 2, 4, 8, 16, 32, 64):
            tokens, offsets = np.full(batch, 400), np.full(batch, 20)
            ms = timed(lambda: pool.step(tokens, offsets, 0, batch))
            curve["step_graph_ms" if graphs else "step_eager_ms"][batch] = round(ms, 3)
    for frames, key in ((3000, "encoder_30s_ms"), (1000, "encoder_10s_ms")):
        for batch in (1, 4, 16):
            mel = np.random.default_rng(0).standard_normal((batch, dims.n_mels, frames)).astype(np.float32)
            curve[key][batch] = round(timed(lambda: engine.encode(mel), repeats=10), 3)
    for key, row in curve.items():
        print(f"{key}: " + ", ".join(f"{batch}: {ms}" for batch, ms in row.items()))
    return curve


def load_tests(bundle: Path, clips: Path, vad: Path, out: Path, max_streams: int, workers_list: list[int]) -> dict:
    """`edge-asr loadtest --find-max` against the GPU bundle, for each --workers (1: unbatched)."""
    results = {}
    for workers in workers_list:
        report = out / f"loadtest-w{workers}.json"
        command = [sys.executable, "-m", "edge_asr.runtime.cli", "loadtest", "--bundle", str(bundle), "--input",
                   str(clips), "--find-max", "--max-streams-to-try", str(max_streams), "--seconds", "12",
                   "--workers", str(workers), "--threads", "8", "--json", str(report)]
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "EDGE_ASR_VAD_MODEL": str(vad)})
        print(done.stdout[-3000:] + done.stderr[-1500:])
        results[f"workers_{workers}"] = {"returncode": done.returncode, "seconds": time.monotonic() - started,
                                         "report": json.loads(report.read_text()) if report.is_file() else None}
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m edge_asr.benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("pack").add_argument("dir", type=Path)
    run = commands.add_parser("run")
    run.add_argument("dir", type=Path)
    run.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-out")))
    run.add_argument("--parts", default=",".join(PARTS))
    run.add_argument("--max-streams", type=int, default=64)
    run.add_argument("--workers", default="1,64", help="the load tests' --workers, comma-separated (default: 1,64)")
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.dir)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = unpack(args.dir, args.out / "tiny.en-cuda")
    results: dict = {}
    parts = args.parts.split(",")
    for part in parts:
        print(f"== {part}", flush=True)
        started = time.monotonic()
        if part == "tests":
            results[part] = run_tests(args.out)
        elif part == "transcribe":
            results[part] = transcribe_clips(bundle, args.dir / "clips")
        elif part == "curve":
            results[part] = batch_curve(bundle)
        elif part == "load":
            results[part] = load_tests(bundle, args.dir / "clips", args.dir / "silero_vad.onnx", args.out,
                                       args.max_streams, [int(w) for w in args.workers.split(",")])
        print(f"== {part} took {time.monotonic() - started:.0f} s", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    shutil.rmtree(bundle)  # 75 MB: not worth bringing back
    return 0


if __name__ == "__main__":
    sys.exit(main())
