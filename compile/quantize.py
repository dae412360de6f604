"""Int8 weights for onnxruntime on CPU."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic


def quantize_int8(src: Path, dst: Path) -> Path:
    """Dynamic quantization of the MatMuls with constant weights: QInt8, one scale per output column.

    Measured on tiny.en with 2 threads: quantizing the convolutions too, or QUInt8 weights, was
    slower. Per-column scales cost no measurable time and, against fp32 on the developer clips, cut
    the mean logit error from 0.62 to 0.38. The decoder's projection to the vocabulary is such a
    MatMul and is quantized with the rest: it reads the largest weight of a decoder step, and int8
    made that step about 1.5 ms (a third) faster.

    The token embedding's Gather is quantized too: otherwise the decoder keeps an fp32 copy of the
    51864 x 384 table (80 MB) beside the int8 projection. With it, the tiny.en decoder file went from
    109 MB to 49 MB, and a word that int8 MatMuls alone flipped on the developer clips
    ("cold-hearted" -> "coldhearted") came back, so WER equals faster-whisper's.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_root_logger():
        quantize_dynamic(
            Path(src), dst, op_types_to_quantize=["MatMul", "Gather"], weight_type=QuantType.QInt8, per_channel=True
        )
    return dst


@contextmanager
def _quiet_root_logger():
    """The quantizer logs a pre-processing hint on the root logger; pre-processing measured no gain here."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
