"""The TVM engine: a bundle's compiled Relax modules (compile/tvm_build.py) run by TVM's runtime alone.

Only libtvm_runtime is loaded (TVM_USE_RUNTIME_LIB), not the 240 MB compiler: a board needs the
apache-tvm wheel installed, but runs none of its compiler. The modules have static shapes, one row
each: an encoder takes one window of ``frames`` Mel frames; the decoder has a one-token step and a
prompt chunk of W tokens with two selected logits, for the audio context an encoder makes. A stock model
has one encoder (30 s); a model that needs no 30 s padding has one per window bucket, and a window is
padded to the smallest bucket that holds it (compile/tvm_build.py). Batches run row by row; a longer
prompt runs chunk by chunk, and a chunk with more selected positions than the prompt function returns
runs again (writing the same cache entries). Weights are loaded once from ``ROLE.params.npz`` and passed
to every call.

TVM takes numpy memory without a copy (DLPack) only when it is 64-byte aligned, so the caches and
audio contexts live in arrays TVM allocates, seen from numpy.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from edge_asr.runtime.bundle import Bundle
from edge_asr.runtime.engines.base import cache_input_names
from edge_asr.runtime.engines.stacked import StackedAudioContext, StackedKVCache
from edge_asr.runtime.errors import BundleError

ALIGNMENT = 64


def _import_tvm():
    """TVM with only its runtime library, unless the process has already imported TVM (a compile or test
    process, which needs the compiler too) or TVM_USE_RUNTIME_LIB says otherwise."""
    runtime_only = "tvm" not in sys.modules and "TVM_USE_RUNTIME_LIB" not in os.environ
    if runtime_only:
        os.environ["TVM_USE_RUNTIME_LIB"] = "1"  # read once, at import; not left for child processes
    try:
        import tvm
        from tvm.runtime.vm import VirtualMachine
    except ImportError as err:
        raise BundleError(f"this bundle needs TVM's runtime: pip install 'edge-asr[tvm-runtime]' ({err}).") from None
    finally:
        if runtime_only:
            del os.environ["TVM_USE_RUNTIME_LIB"]
    return tvm, VirtualMachine


def _tvm_zeros(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """A zeroed numpy array in memory TVM allocated (and so aligned for sharing)."""
    tvm, _ = _import_tvm()
    array = np.from_dlpack(tvm.runtime.empty(shape, np.dtype(dtype).name))
    array[...] = 0
    return array


def _aligned(array: np.ndarray) -> np.ndarray:
    """``array`` itself when TVM can share it, else a copy in memory TVM allocated."""
    if array.flags.c_contiguous and array.ctypes.data % ALIGNMENT == 0:
        return array
    copy = _tvm_zeros(array.shape, array.dtype)
    copy[...] = array
    return copy


def _row_views(k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[list]]:
    """Both stacked arrays, aligned for TVM, and per row the TVM tensors sharing their memory:
    ``views[row]`` = ``k[layer, row:row+1]`` for every layer, then the same of ``v``."""
    tvm, _ = _import_tvm()
    k, v = _aligned(k), _aligned(v)
    views = [[tvm.runtime.from_dlpack(stacked[layer, row : row + 1]) for stacked in (k, v)
              for layer in range(stacked.shape[0])] for row in range(k.shape[1])]
    return k, v, views


class TvmAudioContext(StackedAudioContext):
    def _bind(self) -> list[list]:
        self.cross_k, self.cross_v, views = _row_views(self.cross_k, self.cross_v)
        return views


class TvmKVCache(StackedKVCache):
    def _bind(self) -> list[list]:
        self.self_k, self.self_v, views = _row_views(self.self_k, self.self_v)
        return views


class _Function:
    """One compiled function with its input names and its weights."""

    def __init__(self, vm, name: str, spec: dict, weights: list):
        self.call, self.inputs, self.axes, self.weights = vm[name], spec["inputs"], spec["axes"], weights

    def __call__(self, tensors: list) -> list[np.ndarray]:
        outputs = self.call(*tensors, *self.weights)
        return [np.from_dlpack(out) for out in outputs]


def _load_functions(bundle: Bundle, role: str) -> list[_Function]:
    """A graph's compiled functions, each with its weights: the graph's shared list unless it names its own."""
    tvm, VirtualMachine = _import_tvm()
    spec = bundle.manifest["tvm"][role]
    try:
        vm = VirtualMachine(tvm.runtime.load_module(str(bundle.file(role))), tvm.cpu())
        arrays = np.load(bundle.file(f"{role}_weights"))
        tensors = {name: tvm.runtime.tensor(arrays[name]) for name in arrays.files}
        return [_Function(vm, name, function, [tensors[w] for w in function.get("weights", spec["weights"])])
                for name, function in spec["functions"].items()]
    except (OSError, ValueError, KeyError, tvm.error.TVMError) as err:
        raise BundleError(f"TVM cannot load the {role} of {bundle.path}: {str(err).splitlines()[0]}") from None


class TvmEngine:
    def __init__(self, bundle: Bundle, threads: int):
        tvm, _ = _import_tvm()
        self.tvm, self.dims = tvm, bundle.dims
        _set_threads(tvm, threads)
        encoders, decoders = _load_functions(bundle, "encoder"), _load_functions(bundle, "decoder")
        # Found by their static axes: an encoder per window length, a step and a prompt per audio context.
        self.encoders = {f.axes["frames"]: f for f in encoders}
        self.steps = {f.axes["audio_ctx"]: f for f in decoders if f.axes["n_tokens"] == 1}
        self.prompts = {f.axes["audio_ctx"]: f for f in decoders if f.axes["n_tokens"] > 1}
        prompt = next(iter(self.prompts.values()))
        self.chunk, self.prompt_selects = prompt.axes["n_tokens"], prompt.axes["k"]
        self.state_names = cache_input_names(self.dims.n_text_layer)  # the order _row_views binds them

    def encode(self, mel: np.ndarray) -> TvmAudioContext:
        batch, n_mels, frames = mel.shape
        bucket = min((b for b in self.encoders if b >= frames), default=None)
        if bucket is None:
            raise ValueError(f"this bundle's encoder takes at most {max(self.encoders)} Mel frames, not {frames}")
        encoder = self.encoders[bucket]
        window = np.empty((1, n_mels, bucket), np.float32)
        rows = []
        for row in range(batch):
            window[0, :, :frames] = mel[row]
            # Past the window, more of its last frame, which window_mel made padding (windows.padding_value):
            # a bucket wider than the window only lengthens the padding the model was given anyway.
            window[0, :, frames:] = mel[row, :, -1:]
            rows.append(encoder([self.tvm.runtime.tensor(window)]))
        cross_k, cross_v = (np.concatenate([r[i] for r in rows], axis=1) if batch > 1 else rows[0][i] for i in (0, 1))
        return TvmAudioContext(cross_k, cross_v)

    def new_cache(self, batch: int) -> TvmKVCache:
        shape = (self.dims.n_text_layer, batch, self.dims.n_text_ctx, self.dims.n_text_state)
        return TvmKVCache(_tvm_zeros(shape), _tvm_zeros(shape))

    def decode(self, tokens, offsets, cache: TvmKVCache, audio: TvmAudioContext, select) -> np.ndarray:
        tokens, offsets, select = (np.asarray(a, dtype=np.int64) for a in (tokens, offsets, select))
        if int(offsets.max()) + tokens.shape[1] > self.dims.n_text_ctx:
            raise ValueError(f"decoder positions past the text context of {self.dims.n_text_ctx} tokens")
        logits = np.empty((len(tokens), select.shape[1], self.dims.n_vocab), np.float32)
        for row in range(len(tokens)):
            logits[row] = self._decode_row(row, tokens[row], int(offsets[row]), cache, audio, select[row])
        return logits

    def _decode_row(self, row: int, tokens, offset: int, cache: TvmKVCache, audio: TvmAudioContext, select):
        logits = np.empty((len(select), self.dims.n_vocab), np.float32)
        start = 0
        while start < len(tokens):
            width = self.chunk if len(tokens) - start > 1 and offset + start + self.chunk <= self.dims.n_text_ctx else 1
            chunk = tokens[start : start + width]
            wanted = [i for i, position in enumerate(select) if start <= position < start + len(chunk)]
            for group in _groups(wanted or [None], 1 if width == 1 else self.prompt_selects):
                local = [select[i] - start if i is not None else 0 for i in group]
                out = self._run(row, chunk, offset + start, width, local, cache, audio)
                for j, i in enumerate(group):
                    if i is not None:
                        logits[i] = out[j]
            start += len(chunk)
        return logits

    def _run(self, row, chunk, offset, width, local, cache, audio) -> np.ndarray:
        """One call of step (width 1) or prompt; writes the chunk's keys and values; the selected logits."""
        function = (self.steps if width == 1 else self.prompts)[audio.cross_k.shape[3]]  # the context's length
        padded = np.zeros((1, width), np.int64)
        padded[0, : len(chunk)] = chunk
        selects = np.zeros((1, function.axes["k"]), np.int64)
        selects[0, : len(local)] = local
        small = {"tokens": padded, "offsets": np.array([offset], np.int64), "select": selects}
        bound = dict(zip(self.state_names, cache.values[row] + audio.values[row], strict=True))
        tensors = [bound[name] if name in bound else self.tvm.runtime.tensor(small[name]) for name in function.inputs]
        logits, new_k, new_v = function(tensors)
        n = len(chunk)  # the padding's keys and values are not kept: they would sit past the row's tokens
        cache.self_k[:, row, offset : offset + n] = new_k[:, 0, :n]
        cache.self_v[:, row, offset : offset + n] = new_v[:, 0, :n]
        return logits[0, : len(local)]


def _groups(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _set_threads(tvm, threads: int) -> None:
    """TVM's thread pool size; it reads TVM_NUM_THREADS when made, and can be resized after."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    configure = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
    if configure is not None:
        configure(1, threads)  # 1: big cores first (all of a Pi 4's cores are alike)
