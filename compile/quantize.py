"""Int8 weights for onnxruntime on CPU."""
from __future__ import annotations

from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic


def quantize_int8(src: Path, dst: Path) -> Path:
    """Dynamic quantization of the MatMuls with constant weights (QInt8); convolutions stay fp32.

    Measured on tiny.en with 2 threads, quantizing the convolutions too or QUInt8 weights was slower.
    The decoder's projection to the vocabulary is such a MatMul and is quantized with the rest: it
    reads the largest weight of a decoder step, so int8 makes that step markedly faster.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(Path(src), dst, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
    return dst
