"""The PyTorch engine: the reference model (models/whisper_torch.py) run directly, on the CPU or a CUDA GPU.

It serves three users: distillation (the teacher decodes its labels and a student is judged with the
runtime's own decoding, no export needed), the numerical reference of the compiled engines, and GPU
servers, where caches and audio contexts stay in device memory. Importing this module imports torch;
the runtime imports it only when an engine of this kind is made.

On a GPU a decoder step costs less than launching its kernels one by one (3.4 ms eager against 0.4 ms
replayed for tiny.en on an H200), so the pool's steps (engines/base.py, DecoderPool) replay CUDA graphs,
one per batch size of GRAPH_BATCHES, each over the pool's first slots: a step over any span runs the
smallest graph that covers it, the slots in between riding along. A pool holds every row's audio padded
to the model's whole audio context, with a mask, so utterances of any length share one pool and step.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from edge_asr.runtime.bundle import Bundle
from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.errors import BundleError

GRAPH_BATCHES = (1, 2, 4, 8, 16, 32, 64)
DEVICE_VARIABLE = "EDGE_ASR_DEVICE"  # "cpu" runs a cuda bundle on the CPU (tests, machines without a GPU)
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def load_torch_engine(bundle: Bundle, threads: int) -> "TorchEngine":
    """The engine of a `--target cuda` bundle: its weights in the reference model, on the GPU (or where
    EDGE_ASR_DEVICE says). fp16 weights run in fp32 on a CPU, whose kernels are made for it."""
    from edge_asr.models.whisper_torch import WhisperModel  # the model's code; the bundle holds its weights

    device = os.environ.get(DEVICE_VARIABLE) or "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BundleError(f"bundle {bundle.path} runs on an NVIDIA GPU, and this machine's PyTorch sees none "
                          f"(set {DEVICE_VARIABLE}=cpu to run it on the CPU, slowly).")
    torch.set_num_threads(threads)
    model = WhisperModel(bundle.dims)
    try:
        state = torch.load(bundle.file("weights"), map_location="cpu", weights_only=True)
        model.load_state_dict({name: tensor.float() for name, tensor in state.items()})
    except (RuntimeError, OSError, ValueError) as err:
        raise BundleError(f"bundle {bundle.path} holds weights this model cannot load ({str(err).splitlines()[0]}): "
                          "recompile it with `edge-asr compile --target cuda`.") from None
    if bundle.window_policy.cached_padding:  # computed from the weights, so never stored with them
        model.cache_padding(bundle.window_policy.padding_probes)
    dtype = DTYPES.get(bundle.manifest.get("precision"), torch.float32) if device.startswith("cuda") else torch.float32
    return TorchEngine(model, device, dtype)


class TorchAudioContext:
    """Cross-attention keys and values [n_text_layer, B, n_text_head, frames/2, head_dim] on the model's device."""

    def __init__(self, cross_k: torch.Tensor, cross_v: torch.Tensor):
        self.cross_k, self.cross_v = cross_k, cross_v

    @property
    def batch(self) -> int:
        return self.cross_k.shape[1]

    def take(self, rows: np.ndarray) -> "TorchAudioContext":
        if np.array_equal(rows, np.arange(self.batch)):
            return self
        index = torch.as_tensor(rows, device=self.cross_k.device)
        return TorchAudioContext(self.cross_k[:, index], self.cross_v[:, index])


class TorchKVCache:
    """Self-attention keys and values [n_text_layer, B, n_text_ctx, n_text_state] on the model's device."""

    def __init__(self, self_k: torch.Tensor, self_v: torch.Tensor):
        self.self_k, self.self_v = self_k, self_v

    @property
    def batch(self) -> int:
        return self.self_k.shape[1]

    def take(self, rows: np.ndarray, filled: int | None = None) -> "TorchKVCache":
        index = torch.as_tensor(rows, device=self.self_k.device)
        if filled is None or len(rows) != self.batch:
            return TorchKVCache(self.self_k[:, index].contiguous(), self.self_v[:, index].contiguous())
        self.self_k[:, :, :filled] = self.self_k[:, index, :filled]
        self.self_v[:, :, :filled] = self.self_v[:, index, :filled]
        return self

    def write(self, offsets: torch.Tensor, new_k: torch.Tensor, new_v: torch.Tensor) -> None:
        """Row b's new entries [n_text_layer, B, N, D] go to slots offsets[b] .. offsets[b] + N - 1."""
        rows = torch.arange(new_k.shape[1], device=new_k.device)[:, None]
        slots = offsets[:, None] + torch.arange(new_k.shape[2], device=new_k.device)
        self.self_k[:, rows, slots] = new_k
        self.self_v[:, rows, slots] = new_v


class TorchEngine:
    """The engine interface (engines/base.py) over a WhisperModel-shaped module: ``encoder`` and a
    ``decoder`` with ``cross_kv`` and the cached forward pass. ``graphs``: replay CUDA graphs for pool
    steps (on a CUDA device only)."""

    verifies_drafts = True  # a pass with many logits wanted costs about a step (decoding/draft.py)

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 graphs: bool = True):
        self.device, self.dtype = torch.device(device), dtype
        self.model = model.to(self.device, dtype).eval()
        self.dims: ModelDims = model.dims
        self.graphs = graphs and self.device.type == "cuda"
        # A pool's rows: on a GPU one step of many rows costs little more than one (1.7 ms at 64 against 0.4 ms
        # at 1 for tiny.en on an H200), so a pool holds every stream a loop serves; on a CPU, as onnxruntime's.
        self.pool_rows = GRAPH_BATCHES[-1] if self.device.type == "cuda" else 16

    @torch.inference_mode()
    def encode(self, mel: np.ndarray) -> TorchAudioContext:
        return TorchAudioContext(*self.model.context(self._tensor(mel, self.dtype)))

    @torch.inference_mode()
    def context(self, encoded: torch.Tensor) -> TorchAudioContext:
        """The audio context of encoder output [B, frames/2, D] computed elsewhere (e.g. by a teacher's
        own encoder call whose output is also kept); a model with the cached padding gets the padding's here."""
        return TorchAudioContext(*self.model.audio_context(encoded.to(self.device, self.dtype)))

    def new_cache(self, batch: int) -> TorchKVCache:
        shape = (self.dims.n_text_layer, batch, self.dims.n_text_ctx, self.dims.n_text_state)
        return TorchKVCache(torch.zeros(shape, device=self.device, dtype=self.dtype),
                            torch.zeros(shape, device=self.device, dtype=self.dtype))

    @torch.inference_mode()
    def decode(self, tokens, offsets, cache: TorchKVCache, audio: TorchAudioContext, select) -> np.ndarray:
        if int(np.max(offsets)) + tokens.shape[1] > self.dims.n_text_ctx:
            raise ValueError(f"decoder positions past the text context of {self.dims.n_text_ctx} tokens")
        # No row attends past its offset: the slots beyond the largest need not be read at all.
        filled = max(1, int(np.max(offsets)))
        offsets = self._tensor(offsets, torch.int64)
        logits, new_k, new_v = self.model.decoder(self._tensor(tokens, torch.int64), offsets,
                                                  cache.self_k[:, :, :filled], cache.self_v[:, :, :filled],
                                                  audio.cross_k, audio.cross_v, self._tensor(select, torch.int64))
        cache.write(offsets, new_k, new_v)
        return logits.float().cpu().numpy()

    def _tensor(self, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array)).to(self.device, dtype)

    @staticmethod
    def pool_key(audio: TorchAudioContext) -> None:
        """Every decoding shares a pool: a pool masks each row's audio, whatever its length."""
        return None

    def new_pool(self, audio: TorchAudioContext, capacity: int) -> "TorchPool":
        return TorchPool(self, capacity)


class TorchPool:
    """Decoder pool slots in the engine's device memory (engines/base.py, DecoderPool): caches, audio contexts
    padded to the model's audio context, and a mask of each slot's audio frames."""

    def __init__(self, engine: TorchEngine, capacity: int):
        dims, device, dtype = engine.dims, engine.device, engine.dtype
        self.engine, self.capacity = engine, capacity
        head_dim = dims.n_text_state // dims.n_text_head
        self_shape = (dims.n_text_layer, capacity, dims.n_text_ctx, dims.n_text_state)
        cross_shape = (dims.n_text_layer, capacity, dims.n_text_head, dims.n_audio_ctx, head_dim)
        self.self_k = torch.zeros(self_shape, device=device, dtype=dtype)
        self.self_v = torch.zeros(self_shape, device=device, dtype=dtype)
        self.cross_k = torch.zeros(cross_shape, device=device, dtype=dtype)
        self.cross_v = torch.zeros(cross_shape, device=device, dtype=dtype)
        self.cross_mask = torch.zeros((capacity, 1, 1, dims.n_audio_ctx), device=device, dtype=dtype)
        # A graph reads its inputs from, and writes its logits to, fixed tensors.
        self.tokens = torch.zeros((capacity, 1), device=device, dtype=torch.int64)
        self.offsets = torch.zeros(capacity, device=device, dtype=torch.int64)
        self.select = torch.zeros((capacity, 1), device=device, dtype=torch.int64)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def admit(self, slots: slice, cache: TorchKVCache, audio: TorchAudioContext, filled: int) -> None:
        frames = audio.cross_k.shape[3]
        self.self_k[:, slots, :filled] = cache.self_k[:, :, :filled]
        self.self_v[:, slots, :filled] = cache.self_v[:, :, :filled]
        self.cross_k[:, slots, :, :frames] = audio.cross_k
        self.cross_v[:, slots, :, :frames] = audio.cross_v
        self.cross_mask[slots] = 0.0
        self.cross_mask[slots, ..., frames:] = float("-inf")

    def point(self, cache: TorchKVCache, slots: slice) -> None:
        cache.__init__(self.self_k[:, slots], self.self_v[:, slots])

    def span(self, first: int, stop: int) -> tuple[int, int]:
        if not self.engine.graphs:
            return first, stop
        return 0, next((n for n in GRAPH_BATCHES if n >= stop and n <= self.capacity), self.capacity)

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, offsets: np.ndarray, first: int, stop: int) -> np.ndarray:
        n = stop - first
        if int(np.max(offsets)) + 1 > self.engine.dims.n_text_ctx:
            raise ValueError(f"decoder positions past the text context of {self.engine.dims.n_text_ctx} tokens")
        self.tokens[first:stop, 0] = torch.as_tensor(tokens, dtype=torch.int64)
        self.offsets[first:stop] = torch.as_tensor(offsets, dtype=torch.int64)
        if self.engine.graphs and first == 0 and n in GRAPH_BATCHES:
            graph, logits = self._graphs.get(n) or self._capture(n)
            graph.replay()
        else:
            logits = self._rows(first, stop)
        return logits[:, 0].float().cpu().numpy()

    def _rows(self, first: int, stop: int) -> torch.Tensor:
        """One step of slots [first, stop) from the input tensors, their new keys and values written in place."""
        rows = slice(first, stop)
        self_k, self_v = self.self_k[:, rows], self.self_v[:, rows]
        logits, new_k, new_v = self.engine.model.decoder(
            self.tokens[rows], self.offsets[rows], self_k, self_v, self.cross_k[:, rows], self.cross_v[:, rows],
            self.select[rows], self.cross_mask[rows])
        TorchKVCache(self_k, self_v).write(self.offsets[rows], new_k, new_v)
        return logits

    def _capture(self, n: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Record the step of slots [0, n) as a CUDA graph, after a warm-up on a side stream (as PyTorch
        asks: allocations of the first runs must not land in the graph's pool)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # the warm-up writes this step's keys, as the replay will again
            for _ in range(2):
                self._rows(0, n)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self._rows(0, n)
        self._graphs[n] = (graph, logits)
        return graph, logits
