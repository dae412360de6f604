"""TensorRT FP16 for Jetson: what can be checked without TensorRT, on the real tiny.en graphs.

Checked here: every op of the exported graphs is one TensorRT's ONNX parser imports (8.6 and 10 as
they are; 8.5, JetPack 5's, once LayerNormalization is spelt out, which must compute the same); the
optimization profiles against the graphs' inputs, run in onnxruntime at their min and opt shapes;
the nodes kept in FP32 and the layers the build constrains for them; the runtime's TensorRT/GPU
check; the refusals when TensorRT or cuda-python is missing; and the runtime engine's GPU-buffer
logic, run against stand-ins for cuda-python and TensorRT that execute the ONNX graphs.

The FP16 numerics of these graphs (fp16 weights and activations with normalisation, softmax, powers,
means and Erf in fp32, run by onnxruntime on the CPU) are test_fp16.py's test_fp16_logits_follow_fp32:
it keeps compile/fp16.FP32_OPS in fp32, the same ops fp32_nodes hands TensorRT, so it is not repeated.

The real build and the engine need TensorRT, cuda-python and a Jetson GPU:
test_tensorrt_engine_follows_onnxruntime skips elsewhere, saying which is missing.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import run_cli
from edge_asr.models.clips import JFK_TEXT
from edge_asr.models.wer import normalise
from edge_asr.compile.fp16 import FP32_OPS
from edge_asr.compile.tensorrt_build import (
    TARGET_COMPUTE_CAPABILITY, build_tensorrt, keep_fp32_layers, target_refusal, timing_cache_path,
)
from edge_asr.compile.tensorrt_onnx import (
    FP32_MARK, fp32_nodes, graph_for_tensorrt, onnx_opset, parser_support, unsupported_ops,
)
from edge_asr.compile.tensorrt_profiles import (
    MAX_BATCH, MAX_SELECTED, AxisRange, axis_ranges, graph_input_dims, manifest_shapes, profile_shapes,
)
from edge_asr.runtime.audio import load_audio
from edge_asr.runtime.bundle import Bundle
from edge_asr.runtime.decoding.decode import decode_window
from edge_asr.runtime.decoding.options import DecodingOptions
from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.engines import load_engine
from edge_asr.runtime.threads import Threads
from edge_asr.runtime.engines.tensorrt import check_engine_platform, load_backend, tensorrt_platform
from edge_asr.runtime.errors import BundleError, EdgeAsrError
from edge_asr.runtime.mel import N_SAMPLES, LogMelFrontend
from edge_asr.runtime.transcriber import Transcriber

# TensorRT as JetPack ships it: 5.1 (Xavier's last, Orin's first), 6.0, and 6.1/6.2.
JETPACK_TENSORRT = ("8.5.2.2", "8.6.2.3", "10.3.0.30")
ROLES = ("encoder", "decoder")


@pytest.fixture(scope="module")
def dims(tiny_fp32_bundle) -> ModelDims:
    return ModelDims.from_dict(json.loads((tiny_fp32_bundle / "manifest.json").read_text())["model"]["dims"])


@pytest.fixture(scope="module")
def graphs(tiny_fp32_bundle) -> dict:
    """The fp32 graphs as compile exports them, without their weights."""
    return {role: onnx.load(str(tiny_fp32_bundle / f"{role}.onnx"), load_external_data=False) for role in ROLES}


@pytest.fixture(scope="module")
def spelt_out(tiny_fp32_bundle, tmp_path_factory) -> dict[str, Path]:
    """The graphs as TensorRT 8.5 gets them: LayerNormalization spelt out."""
    folder = tmp_path_factory.mktemp("tensorrt-8.5")
    return {role: graph_for_tensorrt(tiny_fp32_bundle / f"{role}.onnx", folder / f"{role}.onnx", "8.5.2.2")
            for role in ROLES}


def _session(path: Path, optimise: bool = True) -> "ort.InferenceSession":
    options = Threads().helper_options()
    if not optimise:  # onnxruntime would fuse a spelt-out LayerNormalization back into one node
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(session, shapes: dict[str, tuple[int, ...]], n_vocab: int, rng=None) -> dict[str, np.ndarray]:
    """Inputs of the given shapes: activations random with ``rng`` (else zeros), token ids random, and
    offsets and selections zero, which are valid for any number of tokens."""
    feeds = {}
    for value in session.get_inputs():
        shape = shapes[value.name]
        if value.name == "tokens":
            feeds[value.name] = np.random.default_rng(0).integers(0, n_vocab, shape)
        elif value.type == "tensor(int64)":
            feeds[value.name] = np.zeros(shape, np.int64)
        elif rng is not None:
            feeds[value.name] = rng.standard_normal(shape, np.float32)
        else:
            feeds[value.name] = np.zeros(shape, np.float32)
    return feeds


def test_exported_graphs_use_only_ops_tensorrt_imports(graphs):
    """As exported, the graphs suit TensorRT 8.6 and 10; 8.5's parser lacks only LayerNormalization."""
    for role, model in graphs.items():
        norms = sum(node.op_type == "LayerNormalization" for node in model.graph.node)
        for version in JETPACK_TENSORRT:
            support = parser_support(version)
            assert onnx_opset(model) <= support.max_opset
            expected = {"LayerNormalization": norms} if support.since < (8, 6) else {}
            assert unsupported_ops(model, support) == expected, (role, version)
        assert norms > 0


def test_spelt_out_graphs_suit_tensorrt_8_5_and_compute_the_same(tiny_fp32_bundle, spelt_out, dims, jfk_wav):
    for role, path in spelt_out.items():
        model = onnx.load(str(path), load_external_data=False)
        assert path != tiny_fp32_bundle / f"{role}.onnx"
        assert unsupported_ops(model, parser_support("8.5.2.2")) == {}
        assert not any(node.op_type == "LayerNormalization" for node in model.graph.node)
    mel = LogMelFrontend(dims.n_mels)(load_audio(jfk_wav), padding=N_SAMPLES)[None, :, :600]
    native, spelt = _session(tiny_fp32_bundle / "encoder.onnx", optimise=False), _session(spelt_out["encoder"], False)
    for a, b in zip(native.run(None, {"mel": mel}), spelt.run(None, {"mel": mel})):
        np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)  # measured: 5e-6, fp32 rounding
    decoder = tiny_fp32_bundle / "decoder.onnx"
    profile = profile_shapes(graph_input_dims(decoder), axis_ranges(dims)["decoder"])
    shapes = {name: low for name, (low, _, _) in profile.items()}
    native, spelt = _session(decoder, optimise=False), _session(spelt_out["decoder"], False)
    feeds = _feeds(native, shapes, dims.n_vocab, np.random.default_rng(1))
    for a, b in zip(native.run(None, feeds), spelt.run(None, feeds)):
        np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)


def test_graphs_go_to_newer_tensorrt_as_exported(tiny_fp32_bundle, tmp_path):
    for version in JETPACK_TENSORRT[1:]:
        source = tiny_fp32_bundle / "encoder.onnx"
        assert graph_for_tensorrt(source, tmp_path / "encoder.onnx", version) == source
    assert not any(tmp_path.iterdir())


def test_unsupported_ops_are_named(tmp_path):
    from onnx import TensorProto, helper

    def graph(name, nodes):
        return helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])

    body = graph("body", [helper.make_node("Unique", ["x"], ["y"])])  # inside an If: still found
    model = helper.make_model(graph("main", [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("FusedMatMul", ["r", "r"], ["m"], domain="com.microsoft"),
        helper.make_node("Greater", ["x", "x"], ["c"]),
        helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body),
    ]), opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    for version in JETPACK_TENSORRT:
        assert unsupported_ops(model, parser_support(version)) == {"Unique": 2, "com.microsoft.FusedMatMul": 1}
    onnx.save(model, str(tmp_path / "model.onnx"))
    with pytest.raises(EdgeAsrError, match="uses Unique, com.microsoft.FusedMatMul, which the ONNX parser of TensorRT"):
        graph_for_tensorrt(tmp_path / "model.onnx", tmp_path / "out.onnx", "10.3.0.30")


def test_tensorrt_older_than_jetpack_5_is_refused():
    with pytest.raises(EdgeAsrError, match="TensorRT 8.4.1 is older than 8.5 .*upgrade JetPack"):
        parser_support("8.4.1")


def test_profiles_cover_every_graph_input(tiny_fp32_bundle, graphs, dims):
    ranges = axis_ranges(dims)
    profiles = {role: profile_shapes(graph_input_dims(tiny_fp32_bundle / f"{role}.onnx"), ranges[role])
                for role in ROLES}
    for role, model in graphs.items():
        inputs = {value.name: value.type.tensor_type.shape.dim for value in model.graph.input}
        assert set(profiles[role]) == set(inputs)
        for name, (low, opt, high) in profiles[role].items():
            assert len(low) == len(opt) == len(high) == len(inputs[name])
            assert all(a <= b <= c for a, b, c in zip(low, opt, high))
            assert all(low[i] == high[i] == d.dim_value for i, d in enumerate(inputs[name]) if not d.dim_param)
            assert (low[0], high[0]) == (1, MAX_BATCH)  # every input's first axis is the batch
    encoder, decoder = profiles["encoder"], profiles["decoder"]
    assert encoder["mel"][2] == (MAX_BATCH, dims.n_mels, 2 * dims.n_audio_ctx)
    assert decoder["tokens"][2] == (MAX_BATCH, dims.n_text_ctx) and decoder["select"][2] == (MAX_BATCH, MAX_SELECTED)
    for layer in range(dims.n_text_layer):
        assert decoder[f"self_k_{layer}"][0][1:] == (dims.n_text_ctx, dims.n_text_state)
        # the decoder takes every window length the encoder makes: T = frames / 2
        assert [shape[2] for shape in decoder[f"cross_v_{layer}"]] == [shape[2] // 2 for shape in encoder["mel"]]
    # The encoder's outputs name their audio axis as the decoder's inputs do: one range serves both.
    outputs = {d.dim_param for value in graphs["encoder"].graph.output for d in value.type.tensor_type.shape.dim}
    assert outputs - {""} <= set(ranges["decoder"])


def test_profile_shapes_run_in_onnxruntime(tiny_fp32_bundle, dims):
    """Each graph runs at its profile's min and opt shapes and gives the outputs the engine binds."""
    ranges = axis_ranges(dims)
    head_dim = dims.n_text_state // dims.n_text_head
    for role in ROLES:
        path = tiny_fp32_bundle / f"{role}.onnx"
        session = _session(path)
        profile = profile_shapes(graph_input_dims(path), ranges[role])
        for end in (0, 1):
            shapes = {name: ends[end] for name, ends in profile.items()}
            outputs = [o.shape for o in session.run(None, _feeds(session, shapes, dims.n_vocab))]
            if role == "encoder":
                batch, _, frames = shapes["mel"]
                cross = (dims.n_text_layer, batch, dims.n_text_head, frames // 2, head_dim)
                assert outputs == [cross, cross]
            else:
                (batch, n_tokens), k = shapes["tokens"], shapes["select"][1]
                new = (dims.n_text_layer, batch, n_tokens, dims.n_text_state)
                assert outputs == [(batch, k, dims.n_vocab), new, new]


def test_an_axis_without_a_range_is_refused():
    with pytest.raises(EdgeAsrError, match="dynamic axes time with no TensorRT profile range"):
        profile_shapes({"x": ["batch", "time", 3]}, {"batch": AxisRange(1, 1, MAX_BATCH)})


def test_manifest_records_the_shapes(dims):
    shapes = json.loads(json.dumps(manifest_shapes(axis_ranges(dims))))
    assert shapes["batch"] == {"min": 1, "max": MAX_BATCH}
    assert shapes["profiles"]["decoder"]["n_tokens"] == {"min": 1, "opt": 1, "max": dims.n_text_ctx}
    assert shapes["profiles"]["encoder"]["frames"]["max"] == 2 * dims.n_audio_ctx


def test_fp32_nodes_are_the_normalisations_softmaxes_and_erfs(graphs, spelt_out, dims):
    """Per Whisper block: two layer norms (three in the decoder: cross-attention), one softmax per
    attention, one Erf per MLP's GELU (and the encoder's two convolutions'); plus each stack's final norm."""
    expected = {
        "encoder": {"LayerNormalization": 2 * dims.n_audio_layer + 1, "Softmax": dims.n_audio_layer,
                    "Erf": dims.n_audio_layer + 2},
        "decoder": {"LayerNormalization": 3 * dims.n_text_layer + 1, "Softmax": 2 * dims.n_text_layer,
                    "Erf": dims.n_text_layer},
    }
    for role, model in graphs.items():
        assert Counter(node.op_type for node in fp32_nodes(model)) == expected[role]
        spelt = onnx.load(str(spelt_out[role]), load_external_data=False)
        kept = fp32_nodes(spelt)
        assert all(node.op_type in FP32_OPS or FP32_MARK in node.name for node in kept)
        # every step of every spelt-out norm, with its bias: 2 means, Sub, Pow, 2 Adds, Sqrt, Div, Mul
        marked = Counter(node.op_type for node in kept if FP32_MARK in node.name)
        norms = expected[role]["LayerNormalization"]
        assert marked == {"ReduceMean": 2 * norms, "Add": 2 * norms, "Sub": norms, "Pow": norms, "Sqrt": norms,
                          "Div": norms, "Mul": norms}
        assert not {node.op_type for node in kept} & {"MatMul", "Conv", "Gemm"}  # the heavy work runs in FP16


class _Layer:
    """A network layer as keep_fp32_layers sees it: its output tensors and its precision settings."""

    def __init__(self, node):
        self.node, self.precision, self.output_types = node, None, {}
        self.outputs = [SimpleNamespace(name=name) for name in node.output]
        self.num_outputs = len(self.outputs)

    def get_output(self, j):
        return self.outputs[j]

    def set_output_type(self, j, dtype):
        self.output_types[j] = dtype


def test_build_constrains_the_layers_of_the_fp32_nodes(graphs):
    """TensorRT's ONNX parser names a node's output tensor after the ONNX value; with one layer per
    node named so (as it makes them for these ops), the FP32 layers are exactly fp32_nodes'."""
    trt = SimpleNamespace(float32="float32")
    model = graphs["decoder"]
    layers = [_Layer(node) for node in model.graph.node]
    network = SimpleNamespace(num_layers=len(layers), get_layer=layers.__getitem__)
    messages = []
    record = keep_fp32_layers(trt, network, model, messages.append)
    wanted = fp32_nodes(model)
    kept = [layer for layer in layers if layer.precision == "float32"]
    assert [layer.node for layer in kept] == wanted and not messages
    assert all(layer.output_types == {0: "float32"} for layer in kept)
    assert record == {"onnx_nodes": len(wanted), "tensorrt_layers": len(wanted)}

    softmax = next(layer for layer in layers if layer.node.op_type == "Softmax")
    layers.remove(softmax)  # a layer the parser named otherwise: said, not silently lost
    network = SimpleNamespace(num_layers=len(layers), get_layer=layers.__getitem__)
    record = keep_fp32_layers(trt, network, model, messages.append)
    assert record == {"onnx_nodes": len(wanted), "tensorrt_layers": len(wanted) - 1}
    assert messages == [f"warning: no TensorRT layer makes 1 of the {len(wanted)} outputs to keep in FP32 "
                        f"(e.g. {softmax.node.output[0]}): those layers may run in FP16"]


def test_engines_are_built_only_on_their_jetson(monkeypatch, tmp_path):
    orin = {"version": "10.3.0.30", "device": "Orin", "compute_capability": "8.7"}
    assert target_refusal("jetson-orin", orin) is None
    assert target_refusal("jetson-xavier", orin) == (
        "engines for jetson-xavier must be built on the jetson-xavier itself (a GPU of compute capability 7.2); "
        "this machine's GPU is Orin (8.7).")
    assert "jetson-orin, jetson-xavier" in target_refusal("cpu", orin)
    monkeypatch.setenv("EDGE_ASR_CACHE", str(tmp_path))
    paths = {timing_cache_path(orin), timing_cache_path({**orin, "version": "8.6.2.3"}),
             timing_cache_path({**orin, "device": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})}
    assert len(paths) == 3 and all(path.parent == tmp_path / "tensorrt" for path in paths)


def _trt_bundle(recorded: dict | None) -> Bundle:
    manifest = {"target": "jetson-xavier", "precision": "fp16", "model": {"name": "tiny.en"}}
    return Bundle(Path("/data/tiny-xavier"), manifest | ({"tensorrt": recorded} if recorded else {}))


def test_engines_run_only_on_the_tensorrt_and_gpu_they_were_built_for():
    xavier = {"version": "8.5.2.2", "device": "Xavier", "compute_capability": "7.2"}
    check_engine_platform(_trt_bundle(xavier), xavier)
    check_engine_platform(_trt_bundle(xavier), {**xavier, "device": "Xavier NX"})  # same architecture: runs
    orin = {"version": "8.6.2.3", "device": "Orin", "compute_capability": "8.7"}
    for installed in ({**xavier, "version": "8.5.3.1"}, orin):
        with pytest.raises(BundleError) as refused:
            check_engine_platform(_trt_bundle(xavier), installed)
        assert str(refused.value) == (
            "bundle /data/tiny-xavier cannot run here: its engines were built with TensorRT 8.5.2.2 for Xavier "
            f"(compute capability 7.2), and this machine has TensorRT {installed['version']} and {installed['device']} "
            f"({installed['compute_capability']}): rebuild it on this board with `edge-asr compile --model tiny.en "
            "--target jetson-xavier --precision fp16 -o /data/tiny-xavier`.")
    with pytest.raises(BundleError, match="does not record the TensorRT version and GPU its engines were built for"):
        check_engine_platform(_trt_bundle(None), xavier)


def _missing_backend() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt"
    try:
        load_backend()
    except BundleError:
        return "cuda-python"
    return None


def test_missing_backend_is_named():
    missing = _missing_backend()
    if missing is None:
        pytest.skip("tensorrt and cuda-python are both installed here")
    with pytest.raises(BundleError, match=f"TensorRT bundles need (the )?{missing}"):
        load_engine(_trt_bundle(None), threads=2)
    if missing == "tensorrt":
        with pytest.raises(EdgeAsrError, match="needs the tensorrt Python package, which JetPack installs"):
            build_tensorrt(Path("encoder.onnx"), Path("decoder.onnx"), Path("."), "jetson-orin", None, print)


def test_tensorrt_engine_module_stays_off_torch_and_compile():
    code = ("import sys, edge_asr.runtime.engines.tensorrt; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('edge_asr.compile')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _jetson_target() -> str:
    """The target of this machine's GPU; skips, naming what is missing, where there is none."""
    pytest.importorskip("tensorrt", reason="needs tensorrt, which JetPack installs (python3-libnvinfer)")
    pytest.importorskip("cuda", reason="needs cuda-python: pip install 'edge-asr[tensorrt]'")
    try:
        platform = tensorrt_platform(*load_backend())
    except EdgeAsrError as err:
        pytest.skip(f"needs a CUDA GPU: {err}")
    targets = {cc: target for target, cc in TARGET_COMPUTE_CAPABILITY.items()}
    if platform["compute_capability"] not in targets:
        pytest.skip(f"needs a Jetson GPU (Orin 8.7 or Xavier 7.2), not {platform['device']}")
    return targets[platform["compute_capability"]]


def _drive(engine, mel: np.ndarray) -> list[np.ndarray]:
    """Two rows through a prompt pass, a step at different offsets, a beam reorder, a step, and one
    row kept for a last step: the logits of each call. Exercises every path of the device cache:
    writes at one and at per-row offsets, take in place and into a new cache, and audio take."""
    audio = engine.encode(mel).take(np.array([0, 0]))
    cache = engine.new_cache(2)
    select = np.zeros((2, 1), np.int64)
    prompt = np.array([[50257, 50362]] * 2)  # <|startoftranscript|> <|notimestamps|>
    logits = [engine.decode(prompt, np.zeros(2, np.int64), cache, audio, np.array([[0, 1]] * 2))]
    logits.append(engine.decode(np.array([[843], [5891]]), np.array([2, 1]), cache, audio, select))
    cache = cache.take(np.array([1, 0]), filled=3)
    logits.append(engine.decode(np.array([[523], [523]]), np.array([2, 3]), cache, audio, select))
    cache, audio = cache.take(np.array([1])), audio.take(np.array([1]))
    logits.append(engine.decode(np.array([[616]]), np.array([4]), cache, audio, select[:1]))
    return logits


class _StandInGpu:
    """cuda-python's runtime API as the TensorRT engine uses it, on the CPU: device memory is one
    numpy arena at addresses no host pointer has, and every copy happens at once."""

    class cudaError_t:
        cudaSuccess = 0

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice = 1, 2, 3

    cudaHostAllocDefault, cudaHostAllocMapped = 0, 2
    BASE = 1 << 44

    def __init__(self):
        self.arena, self.top, self.pinned = np.zeros(1 << 30, np.uint8), 0, {}  # pages used only when written

    def view(self, address: int, nbytes: int) -> np.ndarray:
        assert self.BASE <= address and address + nbytes <= self.BASE + self.top, "outside device memory"
        return self.arena[address - self.BASE : address - self.BASE + nbytes]

    def cudaMalloc(self, nbytes):
        address, self.top = self.BASE + self.top, self.top + -(-nbytes // 256) * 256
        return 0, address

    def cudaMemsetAsync(self, address, value, nbytes, stream):
        self.view(address, nbytes)[:] = value
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            self.view(dst, nbytes)[:] = np.frombuffer(ctypes.string_at(src, nbytes), np.uint8)
        else:
            assert kind == self.cudaMemcpyKind.cudaMemcpyDeviceToHost
            ctypes.memmove(dst, self.view(src, nbytes).ctypes.data, nbytes)
        return (0,)

    def cudaMemcpy2DAsync(self, dst, dst_pitch, src, src_pitch, width, height, kind, stream):
        assert kind == self.cudaMemcpyKind.cudaMemcpyDeviceToDevice and width <= min(dst_pitch, src_pitch)
        for row in range(height):
            self.view(dst + row * dst_pitch, width)[:] = self.view(src + row * src_pitch, width)
        return (0,)

    def cudaHostAlloc(self, nbytes, flags):
        block = (ctypes.c_byte * nbytes)()
        self.pinned[ctypes.addressof(block)] = block
        return 0, ctypes.addressof(block)

    def cudaFreeHost(self, pointer):
        return (0,)

    cudaFree = cudaStreamSynchronize = cudaFreeHost

    def cudaStreamCreate(self):
        return 0, 7

    def cudaGetDevice(self):
        return 0, 0

    def cudaGetDeviceProperties(self, device):
        return 0, SimpleNamespace(name=b"Orin", major=8, minor=7)


class _StandInTensorRT:
    """TensorRT's Python API as the engine uses it, running a "plan" that is the ONNX graph with
    onnxruntime; integer inputs are int32, as TensorRT 8's parser makes them."""

    __version__ = "8.6.2.3"
    TensorIOMode = SimpleNamespace(INPUT="input", OUTPUT="output")

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            self.severity = severity

    def __init__(self, gpu: _StandInGpu):
        self.gpu = gpu

    @staticmethod
    def nptype(dtype):
        return dtype

    def Runtime(self, logger):
        return SimpleNamespace(deserialize_cuda_engine=lambda plan: _StandInPlan(self.gpu, plan))


class _StandInPlan:
    def __init__(self, gpu: _StandInGpu, plan: bytes):
        self.session = ort.InferenceSession(plan, Threads().helper_options(), providers=["CPUExecutionProvider"])
        self.gpu, self.modes, self.dtypes = gpu, {}, {}
        for value in self.session.get_inputs():
            self.modes[value.name] = "input"
            self.dtypes[value.name] = np.dtype(np.int32 if value.type == "tensor(int64)" else np.float32)
        for value in self.session.get_outputs():
            self.modes[value.name], self.dtypes[value.name] = "output", np.dtype(np.float32)
        self.names = list(self.modes)
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.modes[name]

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def create_execution_context(self):
        return _StandInContext(self)


class _StandInContext:
    """Runs the graph when an output shape is first asked for, reading the inputs from device memory."""

    def __init__(self, plan: _StandInPlan):
        self.plan, self.shapes, self.addresses, self.results = plan, {}, {}, None

    def set_input_shape(self, name, shape):
        self.shapes[name], self.results = tuple(shape), None
        return True

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def get_tensor_shape(self, name):
        if self.results is None:
            feeds = {}
            for value in self.plan.session.get_inputs():
                dtype, shape = self.plan.dtypes[value.name], self.shapes[value.name]
                memory = self.plan.gpu.view(self.addresses[value.name], int(np.prod(shape)) * dtype.itemsize)
                array = memory.view(dtype).reshape(shape)
                feeds[value.name] = array.astype(np.int64) if dtype == np.int32 else array.copy()
            names = [value.name for value in self.plan.session.get_outputs()]
            self.results = dict(zip(names, self.plan.session.run(None, feeds)))
        return self.results[name].shape

    def execute_async_v3(self, stream):
        for name, array in self.results.items():
            self.plan.gpu.view(self.addresses[name], array.nbytes)[:] = array.reshape(-1).view(np.uint8)
        return True


@pytest.fixture
def stand_in_backend(monkeypatch) -> _StandInGpu:
    gpu = _StandInGpu()
    monkeypatch.setitem(sys.modules, "tensorrt", _StandInTensorRT(gpu))
    monkeypatch.setitem(sys.modules, "cuda", SimpleNamespace(bindings=SimpleNamespace(runtime=gpu)))
    monkeypatch.setitem(sys.modules, "cuda.bindings", sys.modules["cuda"].bindings)
    return gpu


def _stand_in_bundle(fp32: Path, folder: Path) -> Bundle:
    """The fp32 bundle as a TensorRT one whose "plans" are its ONNX graphs."""
    manifest = json.loads((fp32 / "manifest.json").read_text())
    for role in ("encoder", "decoder"):
        (folder / f"{role}.plan").symlink_to(fp32 / f"{role}.onnx")
        manifest["files"][role]["path"] = f"{role}.plan"
    (folder / "tokenizer.json").symlink_to(fp32 / "tokenizer.json")
    record = {"version": _StandInTensorRT.__version__, "device": "Orin", "compute_capability": "8.7"}
    return Bundle(folder, manifest | {"backend": "tensorrt", "target": "jetson-orin", "precision": "fp16",
                                      "tensorrt": record})


@pytest.mark.slow
def test_engine_buffers_on_a_stand_in_gpu_decode_as_onnxruntime(stand_in_backend, tiny_fp32_bundle, tmp_path,
                                                                 jfk_wav):
    """The engine's device-buffer logic (layer addresses, cache writes, takes, int32 feeds, page-locked
    staging), run against stand-ins for cuda-python and TensorRT that execute the same fp32 graphs:
    it must decode exactly as the onnxruntime engine. The real APIs' behaviour is not checked here."""
    reference = Transcriber(tiny_fp32_bundle, threads=2)
    engine = load_engine(_stand_in_bundle(tiny_fp32_bundle, tmp_path), threads=2)
    mel = reference.frontend(load_audio(jfk_wav), padding=N_SAMPLES)[None, :, :3000]
    for device, host in zip(_drive(engine, mel), _drive(reference.engine, mel)):
        np.testing.assert_allclose(device, host, atol=1e-4, rtol=1e-4)
    options = DecodingOptions(language="en", beam_size=5)
    texts = [decode_window(e, reference.tokenizer, e.encode(mel), options)[0].text for e in (engine, reference.engine)]
    assert texts[0] == texts[1] and normalise(texts[0]) == normalise(JFK_TEXT)
    assert stand_in_backend.pinned  # feeds went through page-locked buffers


def test_tensorrt_engine_follows_onnxruntime(tiny_fp32_bundle, tmp_path, jfk_wav):
    target = _jetson_target()
    out = tmp_path / "tiny-tensorrt"
    done = run_cli("compile", "--model", "tiny.en", "--target", target, "--precision", "fp16", "-o", out)
    assert done.returncode == 0, done.stderr
    tensorrt, fp32 = Transcriber(out, threads=2), Transcriber(tiny_fp32_bundle, threads=2)
    mel = tensorrt.frontend(load_audio(jfk_wav), padding=N_SAMPLES)[None, :, :3000]
    for half, full in zip(_drive(tensorrt.engine, mel), _drive(fp32.engine, mel)):
        assert np.abs(half - full).max() < 0.1  # the bound test_fp16 holds onnxruntime's fp16 to
        assert (half.argmax(-1) == full.argmax(-1)).all()
    assert normalise(tensorrt.transcribe(jfk_wav).text) == normalise(JFK_TEXT)
