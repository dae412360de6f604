"""Half-precision graphs for onnxruntime (CUDA and TensorRT execution providers, and to check the
numerics a TensorRT FP16 engine will have, on a CPU)."""
from __future__ import annotations

from pathlib import Path

import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

# Kept in fp32: normalisation and softmax sum many terms, and their partial sums overflow or lose the
# small differences that matter in fp16 (the layers TensorRT builders also keep in fp32).
FP32_OPS = ["LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Erf"]


def convert_fp16(src: Path, dst: Path) -> Path:
    """Weights and activations in fp16, inputs and outputs left fp32, so the engine feeds the same arrays
    (the graph casts at its edges)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                     op_block_list=DEFAULT_OP_BLOCK_LIST + FP32_OPS)
    onnx.save(model, str(dst))
    return dst
