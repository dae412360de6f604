"""TensorRT optimization profiles: the range of every dynamic axis of the exported graphs.

A TensorRT engine accepts only input shapes inside its profile (min..max per axis) and picks its
kernels for the profile's ``opt`` shape. The axes are the named dynamic axes of
compile/onnx_export.py; each input's min/opt/max shapes are read off the ONNX file, so a renamed or
added axis fails here, at build time, rather than as a shape error on the board.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.errors import EdgeAsrError

# The multi-stream use: one Jetson serving 16 streams, whose decoder steps the serving engine loop
# gathers into pools of 16 rows (runtime/serving/step_pools.py, POOL_ROWS).
MAX_BATCH = 16
# Logits wanted per row: one per step, two in the prompt pass (<|startoftranscript|> for the
# no-speech probability, and the last token): runtime/decoding/decode.py.
MAX_SELECTED = 2
# The shortest window the decoding options accept (window_frames: even, at least 2).
MIN_FRAMES = 2


@dataclass(frozen=True)
class AxisRange:
    min: int
    opt: int
    max: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def axis_ranges(dims: ModelDims, max_batch: int = MAX_BATCH) -> dict[str, dict[str, AxisRange]]:
    """For each graph, the range of each of its named dynamic axes."""
    frames = 2 * dims.n_audio_ctx
    return {
        "encoder": {
            "batch": AxisRange(1, 1, max_batch),  # windows are encoded as utterances end, mostly one at a time
            "frames": AxisRange(MIN_FRAMES, frames, frames),  # tuned for the full 30 s window
        },
        "decoder": {
            "batch": AxisRange(1, max_batch, max_batch),  # steps of many streams run as one batch
            "n_tokens": AxisRange(1, 1, dims.n_text_ctx),  # one per step; the prompt pass has more
            "audio_ctx": AxisRange(MIN_FRAMES // 2, dims.n_audio_ctx, dims.n_audio_ctx),
            "k": AxisRange(1, 1, MAX_SELECTED),
        },
    }


def graph_input_dims(path: Path) -> dict[str, list[int | str]]:
    """Each input of an ONNX graph with its dimensions: a size, or the name of a dynamic axis."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {tensor.name for tensor in model.graph.initializer}
    return {
        value.name: [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]
        for value in model.graph.input
        if value.name not in initializers  # old exporters list weights as inputs too
    }


def profile_shapes(
    inputs: dict[str, list[int | str]], axes: dict[str, AxisRange]
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """The (min, opt, max) shapes of each input, its dynamic axes taken from ``axes``."""
    unknown = sorted({dim for dims in inputs.values() for dim in dims if isinstance(dim, str) and dim not in axes})
    if unknown:
        raise EdgeAsrError(f"the graph has dynamic axes {', '.join(unknown)} with no TensorRT profile range "
                           "(compile/tensorrt_profiles.py): give them one.")
    return {
        name: tuple(tuple(getattr(axes[d], end) if isinstance(d, str) else d for d in dims)
                    for end in ("min", "opt", "max"))
        for name, dims in inputs.items()
    }


def manifest_shapes(ranges: dict[str, dict[str, AxisRange]]) -> dict:
    """The manifest's record of the shapes the engines accept."""
    batch = ranges["decoder"]["batch"]
    return {
        "batch": {"min": batch.min, "max": batch.max},
        "profiles": {graph: {axis: r.to_dict() for axis, r in axes.items()} for graph, axes in ranges.items()},
    }
