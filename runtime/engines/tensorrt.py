"""The TensorRT engine: the bundle's encoder.plan and decoder.plan on a Jetson's GPU.

The plans have the inputs and outputs of the ONNX graphs they were built from (see ort.py), with two
differences TensorRT brings: integer inputs are int32 on TensorRT 8 (its ONNX parser casts int64
down) and int64 on TensorRT 10, so feeds are converted to the engine's own dtypes; and shapes must
lie inside the engine's optimization profile (compile/tensorrt_profiles.py).

What the decoder reads stays on the GPU: the audio context (cross-attention keys and values) that
encode leaves there, and the self-attention KV cache, which each step extends on the device. Per
step only tokens, offsets and select go up and the logits come down, through page-locked buffers.

A plan runs only on the TensorRT version and the GPU it was built for; the manifest records both and
the engine checks them before TensorRT reads the plan (TensorRT itself fails with a deserialisation
error that does not say why).
"""
from __future__ import annotations

import threading
import weakref
from pathlib import Path
from types import ModuleType

import numpy as np

from edge_asr.runtime.bundle import Bundle
from edge_asr.runtime.engines.base import check_decoder_inputs
from edge_asr.runtime.errors import BundleError, EdgeAsrError
from edge_asr.runtime.host_memory import cuda_runtime, host_buffer

PLATFORM_KEYS = ("version", "device", "compute_capability")
FLOAT32_BYTES = 4  # the caches and audio contexts are the graphs' fp32 inputs, whatever precision runs inside


def load_backend() -> tuple[ModuleType, ModuleType]:
    """The tensorrt module and cuda-python's runtime API, or a BundleError naming the one missing."""
    try:
        import tensorrt
    except ImportError:
        raise BundleError("TensorRT bundles need the tensorrt Python package, which JetPack installs on the board "
                          "(apt-get install python3-libnvinfer); it is not importable here.") from None
    try:
        cudart = cuda_runtime()
    except EdgeAsrError:
        raise BundleError("TensorRT bundles need cuda-python for their GPU buffers: "
                          "pip install 'edge-asr[tensorrt]'.") from None
    return tensorrt, cudart


def tensorrt_platform(trt: ModuleType, cudart: ModuleType) -> dict[str, str]:
    """This machine's TensorRT version and GPU, as a bundle's manifest records them."""
    cuda = _Cuda(cudart)
    device = cuda.check(cudart.cudaGetDevice(), "looking for a CUDA GPU")
    properties = cuda.check(cudart.cudaGetDeviceProperties(device), "reading the GPU's properties")
    return {"version": trt.__version__, "device": properties.name.decode(),
            "compute_capability": f"{properties.major}.{properties.minor}"}


def platform_mismatch(recorded: dict, installed: dict) -> str | None:
    """Why engines built on the ``recorded`` platform cannot run on the ``installed`` one, or None.

    TensorRT refuses a plan from another TensorRT version or another GPU architecture (compute
    capability). The GPU's name is reported but not compared: an Orin NX runs an AGX Orin's plan,
    with TensorRT's own warning that the kernels were timed on the other module.
    """
    if all(recorded[key] == installed[key] for key in ("version", "compute_capability")):
        return None
    return (f"its engines were built with TensorRT {recorded['version']} for {recorded['device']} (compute "
            f"capability {recorded['compute_capability']}), and this machine has TensorRT {installed['version']} "
            f"and {installed['device']} ({installed['compute_capability']})")


def check_engine_platform(bundle: Bundle, installed: dict) -> None:
    """Refuse, in one sentence, a bundle whose engines were built for another TensorRT or GPU."""
    manifest = bundle.manifest
    rebuild = (f"rebuild it on this board with `edge-asr compile --model {manifest['model'].get('name', 'MODEL')} "
               f"--target {manifest['target']} --precision {manifest.get('precision', 'fp16')} -o {bundle.path}`")
    recorded = manifest.get("tensorrt")
    if not isinstance(recorded, dict) or not all(key in recorded for key in PLATFORM_KEYS):
        raise BundleError(f"bundle {bundle.path} does not record the TensorRT version and GPU its engines were "
                          f"built for: {rebuild}.")
    reason = platform_mismatch(recorded, installed)
    if reason:
        raise BundleError(f"bundle {bundle.path} cannot run here: {reason}: {rebuild}.")


class _DeviceMemory:
    """A block of GPU memory, given back to CUDA when the object is collected."""

    def __init__(self, cuda: "_Cuda", nbytes: int):
        self.nbytes = nbytes
        self.address = int(cuda.check(cuda.rt.cudaMalloc(max(nbytes, 1)), f"allocating {nbytes} bytes on the GPU"))
        release = weakref.finalize(self, cuda.rt.cudaFree, self.address)
        release.atexit = False  # at exit the CUDA context may be gone already, and it frees everything


class _Cuda:
    """cuda-python's runtime API, each call checked, so that a failure is one sentence."""

    def __init__(self, cudart: ModuleType):
        self.rt = cudart

    def check(self, result: tuple, doing: str):
        error, *values = result
        if error != self.rt.cudaError_t.cudaSuccess:
            raise EdgeAsrError(f"CUDA failed while {doing}: {self.rt.cudaGetErrorString(error)[1].decode()}.")
        return values[0] if values else None

    def zeros(self, nbytes: int, stream) -> _DeviceMemory:
        """Zeroed memory: a cache slot never written must not hold NaN, which a zero attention weight
        would still spread (0 * NaN is NaN)."""
        memory = _DeviceMemory(self, nbytes)
        self.check(self.rt.cudaMemsetAsync(memory.address, 0, memory.nbytes, stream), "zeroing GPU memory")
        return memory

    def to_device(self, address: int, host: np.ndarray, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.check(self.rt.cudaMemcpyAsync(address, host.ctypes.data, host.nbytes, kind, stream), "copying to the GPU")

    def to_host(self, host: np.ndarray, address: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.check(self.rt.cudaMemcpyAsync(host.ctypes.data, address, host.nbytes, kind, stream),
                   "copying from the GPU")

    def copy_rows(self, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, height: int, stream) -> None:
        """``height`` rows of ``width`` bytes from ``src`` to ``dst`` on the GPU, each address
        advancing by its pitch per row."""
        if width and height:
            kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
            self.check(self.rt.cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, height, kind, stream),
                       "copying on the GPU")

    def take_rows(self, dst: _DeviceMemory, src: _DeviceMemory, layers: int, src_batch: int, rows: np.ndarray,
                  row_bytes: int, width: int, stream) -> None:
        """``dst[:, i, :width] = src[:, rows[i], :width]`` for arrays [layers, batch, row_bytes]: one
        2D copy per row, its height the layers."""
        for i, row in enumerate(rows):
            self.copy_rows(dst.address + i * row_bytes, len(rows) * row_bytes, src.address + int(row) * row_bytes,
                           src_batch * row_bytes, width, layers, stream)

    def new_stream(self):
        return self.check(self.rt.cudaStreamCreate(), "creating a CUDA stream")

    def synchronize(self, stream) -> None:
        self.check(self.rt.cudaStreamSynchronize(stream), "running on the GPU")


class _PlanRunner:
    """One TensorRT plan: its execution context and CUDA stream, and the GPU and page-locked host
    buffers of the inputs and outputs it owns, grown to the largest shapes seen so far."""

    def __init__(self, trt: ModuleType, cuda: _Cuda, runtime, plan: Path):
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise BundleError(f"TensorRT cannot load {plan} (its log above says why): rebuild the bundle with "
                              "`edge-asr compile` on this board.")
        self.engine, self.cuda = engine, cuda
        self.context = engine.create_execution_context()
        self.stream = cuda.new_stream()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = {name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT}
        self.dtypes = {name: np.dtype(trt.nptype(engine.get_tensor_dtype(name))) for name in names}
        self.lock = threading.Lock()  # an execution context runs one call at a time
        self._device: dict[str, _DeviceMemory] = {}
        self._host: dict[str, np.ndarray] = {}

    def bind_input(self, name: str, shape: tuple[int, ...], address: int) -> None:
        if not self.context.set_input_shape(name, tuple(shape)):
            low, _, high = self.engine.get_tensor_profile_shape(name, 0)
            raise ValueError(f"{name} of shape {tuple(shape)} lies outside the shapes this engine was built for, "
                             f"{tuple(low)} to {tuple(high)}.")
        self.context.set_tensor_address(name, address)

    def upload(self, name: str, array: np.ndarray) -> None:
        """Bind an input fed from the host: through a page-locked buffer (so the copy is truly
        asynchronous) in the engine's dtype (the assignment casts int64 to TensorRT 8's int32)."""
        host = self._host_view(name, array.shape)
        host[...] = array
        device = self._scratch(name, host.nbytes)
        self.cuda.to_device(device.address, host, self.stream)
        self.bind_input(name, array.shape, device.address)

    def bind_output(self, name: str, keep: bool = False) -> tuple[tuple[int, ...], _DeviceMemory]:
        """Bind an output for the input shapes bound: to memory of its own when the result outlives
        the call (``keep``), else to a scratch buffer reused by the next call."""
        shape = tuple(self.context.get_tensor_shape(name))
        nbytes = int(np.prod(shape)) * self.dtypes[name].itemsize
        memory = _DeviceMemory(self.cuda, nbytes) if keep else self._scratch(name, nbytes)
        self.context.set_tensor_address(name, memory.address)
        return shape, memory

    def run(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise EdgeAsrError("TensorRT failed to run the engine (its log above says why).")

    def download(self, name: str, shape: tuple[int, ...], memory: _DeviceMemory) -> np.ndarray:
        """An output copied to the host once the stream has finished; a copy of the page-locked
        buffer, which the next call reuses."""
        host = self._host_view(name, shape)
        self.cuda.to_host(host, memory.address, self.stream)
        self.cuda.synchronize(self.stream)
        return host.copy()

    def _scratch(self, name: str, nbytes: int) -> _DeviceMemory:
        memory = self._device.get(name)
        if memory is None or memory.nbytes < nbytes:
            memory = self._device[name] = _DeviceMemory(self.cuda, nbytes)
        return memory

    def _host_view(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        buffer = self._host.get(name)
        if buffer is None or buffer.size < count:
            buffer = self._host[name] = host_buffer(count, self.dtypes[name], pinned=True)
        return buffer[:count].reshape(shape)


def _layer_inputs(shape: tuple[int, ...], stacked: dict[str, _DeviceMemory]) -> dict[str, tuple[tuple[int, ...], int]]:
    """The decoder inputs ``{name}_{layer}`` that arrays stacked [layers, ...] on the GPU feed in
    place: each layer's shape and address (a layer is one contiguous block)."""
    layers, *layer_shape = shape
    return {f"{name}_{layer}": (tuple(layer_shape), memory.address + layer * (memory.nbytes // layers))
            for name, memory in stacked.items() for layer in range(layers)}


class TensorRTAudioContext:
    """cross_k, cross_v [n_text_layer, B, H, T, dh] float32 on the GPU; each layer is one
    contiguous block, fed to the decoder in place."""

    def __init__(self, runner: _PlanRunner, shape: tuple[int, ...], cross_k: _DeviceMemory, cross_v: _DeviceMemory):
        self._runner, self.shape, self.cross_k, self.cross_v = runner, shape, cross_k, cross_v

    @property
    def batch(self) -> int:
        return self.shape[1]

    def layer_inputs(self) -> dict[str, tuple[tuple[int, ...], int]]:
        return _layer_inputs(self.shape, {"cross_k": self.cross_k, "cross_v": self.cross_v})

    def take(self, rows: np.ndarray) -> "TensorRTAudioContext":
        if np.array_equal(rows, np.arange(self.batch)):
            return self
        runner, layers = self._runner, self.shape[0]
        row_bytes = self.cross_k.nbytes // (layers * self.batch)
        shape = (layers, len(rows), *self.shape[2:])
        taken = []
        for memory in (self.cross_k, self.cross_v):
            copy = _DeviceMemory(runner.cuda, layers * len(rows) * row_bytes)
            runner.cuda.take_rows(copy, memory, layers, self.batch, rows, row_bytes, row_bytes, runner.stream)
            taken.append(copy)
        return TensorRTAudioContext(runner, shape, *taken)


class TensorRTKVCache:
    """self_k, self_v [n_text_layer, B, n_text_ctx, n_text_state] float32 on the GPU; each step's new
    keys and values are copied into them there, at each row's offset."""

    def __init__(self, runner: _PlanRunner, shape: tuple[int, int, int, int]):
        self._runner, self.shape = runner, shape
        self.self_k, self.self_v = self._zeros(), self._zeros()
        self._spare: tuple[_DeviceMemory, _DeviceMemory] | None = None

    @property
    def batch(self) -> int:
        return self.shape[1]

    def _zeros(self) -> _DeviceMemory:
        return self._runner.cuda.zeros(int(np.prod(self.shape)) * FLOAT32_BYTES, self._runner.stream)

    def layer_inputs(self) -> dict[str, tuple[tuple[int, ...], int]]:
        return _layer_inputs(self.shape, {"self_k": self.self_k, "self_v": self.self_v})

    def take(self, rows: np.ndarray, filled: int | None = None) -> "TensorRTKVCache":
        layers, batch, slots, state = self.shape
        slot = state * FLOAT32_BYTES
        row_bytes, width = slots * slot, (slots if filled is None else filled) * slot
        cuda, stream = self._runner.cuda, self._runner.stream
        if filled is None or len(rows) != batch:
            taken = TensorRTKVCache(self._runner, (layers, len(rows), slots, state))
            for dst, src in ((taken.self_k, self.self_k), (taken.self_v, self.self_v)):
                cuda.take_rows(dst, src, layers, batch, rows, row_bytes, width, stream)
            return taken
        # Beam search reorders every step: gathering into a spare pair and swapping costs no allocation.
        spare = self._spare or (self._zeros(), self._zeros())
        for dst, src in zip(spare, (self.self_k, self.self_v), strict=True):
            cuda.take_rows(dst, src, layers, batch, rows, row_bytes, width, stream)
        self._spare, (self.self_k, self.self_v) = (self.self_k, self.self_v), spare
        return self

    def write(self, offsets: np.ndarray, n_tokens: int, new_k: _DeviceMemory, new_v: _DeviceMemory) -> None:
        """Copy the step's new keys and values [n_text_layer, B, n_tokens, D] into slots
        ``offsets[b] ..`` of each row b, on the decoder's stream."""
        layers, batch, slots, state = self.shape
        slot, cuda, stream = state * FLOAT32_BYTES, self._runner.cuda, self._runner.stream
        row, new_row = slots * slot, n_tokens * slot
        for new, cache in ((new_k, self.self_k), (new_v, self.self_v)):
            if np.all(offsets == offsets[0]):  # every (layer, row) block moves alike: one copy of them all
                cuda.copy_rows(cache.address + int(offsets[0]) * slot, row, new.address, new_row, new_row,
                               layers * batch, stream)
                continue
            for b, offset in enumerate(offsets):
                cuda.copy_rows(cache.address + b * row + int(offset) * slot, batch * row, new.address + b * new_row,
                               batch * new_row, new_row, layers, stream)


class TensorRTEngine:
    device = "cuda"  # the streaming recognizer keeps its Mel windows page-locked for an engine on a GPU

    def __init__(self, bundle: Bundle, threads: int):
        # ``threads`` sizes the CPU engines' pools; TensorRT runs on the GPU and takes none.
        trt, cudart = load_backend()
        check_engine_platform(bundle, tensorrt_platform(trt, cudart))
        self.dims = bundle.dims
        cuda = _Cuda(cudart)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # must outlive the engines it made
        self._encoder = _PlanRunner(trt, cuda, self._runtime, bundle.file("encoder"))
        self._decoder = _PlanRunner(trt, cuda, self._runtime, bundle.file("decoder"))
        check_decoder_inputs(self._decoder.inputs, self.dims.n_text_layer, bundle.file("decoder"))

    def encode(self, mel: np.ndarray) -> TensorRTAudioContext:
        runner = self._encoder
        with runner.lock:
            runner.upload("mel", np.asarray(mel, dtype=np.float32))
            shape, cross_k = runner.bind_output("cross_k", keep=True)
            _, cross_v = runner.bind_output("cross_v", keep=True)
            runner.run()
            runner.cuda.synchronize(runner.stream)  # the decoder reads the context on its own stream
        return TensorRTAudioContext(self._decoder, shape, cross_k, cross_v)

    def new_cache(self, batch: int) -> TensorRTKVCache:
        dims = self.dims
        return TensorRTKVCache(self._decoder, (dims.n_text_layer, batch, dims.n_text_ctx, dims.n_text_state))

    def decode(self, tokens, offsets, cache: TensorRTKVCache, audio: TensorRTAudioContext, select) -> np.ndarray:
        offsets = np.asarray(offsets, dtype=np.int64)
        batch, n_tokens = tokens.shape
        if not batch == len(offsets) == cache.batch == audio.batch:
            raise ValueError(f"{batch} token rows need as many offsets, cache rows and audio contexts, not "
                             f"{len(offsets)}, {cache.batch} and {audio.batch}")
        if int(offsets.max()) + n_tokens > self.dims.n_text_ctx:
            raise ValueError(f"decoder positions past the text context of {self.dims.n_text_ctx} tokens")
        runner = self._decoder
        with runner.lock:
            for name, array in (("tokens", tokens), ("offsets", offsets), ("select", select)):
                runner.upload(name, np.asarray(array))
            for name, (shape, address) in (cache.layer_inputs() | audio.layer_inputs()).items():
                runner.bind_input(name, shape, address)
            shape, logits = runner.bind_output("logits")
            _, new_k = runner.bind_output("new_k")
            _, new_v = runner.bind_output("new_v")
            runner.run()
            cache.write(offsets, n_tokens, new_k, new_v)
            return runner.download("logits", shape, logits)
