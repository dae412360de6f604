"""The exported ONNX graphs as TensorRT's ONNX parser takes them: which ops each TensorRT version
imports, LayerNormalization spelt out for the parser that lacks it, and the nodes kept in FP32.

Everything here works on the ONNX graph alone, so it is tested without TensorRT.

Jetson boards get their TensorRT from JetPack: JetPack 5.1 (the last for Xavier, the first for Orin)
has TensorRT 8.5.2, JetPack 6.0 has 8.6.2, JetPack 6.1 and 6.2 have 10.3.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_asr.compile.fp16 import FP32_OPS
from edge_asr.runtime.errors import EdgeAsrError

# The ops marked "Y" in onnx-tensorrt's docs/operators.md on branch release/8.5-GA ("TensorRT 8.5
# supports operators up to Opset 17"; https://github.com/onnx/onnx-tensorrt/blob/release/8.5-GA/docs/operators.md).
ONNX_OPS_TENSORRT_8_5 = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSigmoid HardSwish Identity If ImageScaler
InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# The name part that marks the nodes of a spelt-out LayerNormalization (see fp32_nodes).
FP32_MARK = "/fp32/"


@dataclass(frozen=True)
class OnnxParserSupport:
    """What the ONNX parser of TensorRT ``since`` and later versions imports."""

    since: tuple[int, int]
    ops: frozenset[str]
    max_opset: int


# Later versions only add ops (the 9.2 and 10.x tables list every op above as "Y"); those they add
# that these graphs do not use are left out, so the table claims no more than was looked up.
PARSER_SUPPORT = (
    OnnxParserSupport((8, 5), ONNX_OPS_TENSORRT_8_5, 17),
    # 8.6 imports LayerNormalization as its new normalization layer; 8.5 fails with "No importer
    # registered for op: LayerNormalization" (NVIDIA/TensorRT#2875, ItayElam/SegmentAnything-TensorRT#2).
    OnnxParserSupport((8, 6), ONNX_OPS_TENSORRT_8_5 | {"LayerNormalization"}, 17),
    # "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20" (operators.md, 10.0).
    OnnxParserSupport((10, 0), ONNX_OPS_TENSORRT_8_5 | {"LayerNormalization"}, 20),
)


def parser_support(tensorrt_version: str) -> OnnxParserSupport:
    """The parser support of a TensorRT version such as ``trt.__version__`` ("8.5.2.2")."""
    major_minor = tuple(int(part) for part in tensorrt_version.split(".")[:2])
    known = [support for support in PARSER_SUPPORT if support.since <= major_minor]
    if not known:
        raise EdgeAsrError(f"TensorRT {tensorrt_version} is older than 8.5 (JetPack 5.1), the oldest whose ONNX "
                           "parser and tensor API edge-asr uses: upgrade JetPack on this board.")
    return known[-1]


def unsupported_ops(model: onnx.ModelProto, support: OnnxParserSupport) -> dict[str, int]:
    """The ops of ``model`` (with how many nodes use each) that this parser cannot import; ops of
    another domain than ONNX's own (onnxruntime's contrib ops, say) are named with their domain."""
    missing = Counter()
    for node in _all_nodes(model.graph):
        if node.domain not in ("", "ai.onnx"):
            missing[f"{node.domain}.{node.op_type}"] += 1
        elif node.op_type not in support.ops:
            missing[node.op_type] += 1
    return dict(missing)


def _all_nodes(graph: onnx.GraphProto):
    """Every node, those in the bodies of If, Loop and Scan included."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                yield from _all_nodes(body)


def onnx_opset(model: onnx.ModelProto) -> int:
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def graph_for_tensorrt(src: Path, dst: Path, tensorrt_version: str) -> Path:
    """The graph this TensorRT's parser can import: ``src`` itself, or, where the parser lacks
    LayerNormalization (TensorRT 8.5), a copy written to ``dst`` with each one spelt out."""
    support = parser_support(tensorrt_version)
    model = onnx.load(str(src), load_external_data=False)
    if onnx_opset(model) > support.max_opset:
        raise EdgeAsrError(f"{src.name} has ONNX opset {onnx_opset(model)}, and the parser of TensorRT "
                           f"{tensorrt_version} reads opsets up to {support.max_opset}.")
    if "LayerNormalization" in unsupported_ops(model, support):
        model = spell_out_layer_normalization(onnx.load(str(src)))
        # External data: a rewritten graph may pass protobuf's 2 GB limit (large models do).
        onnx.save(model, str(dst), save_as_external_data=True, location=f"{dst.name}.weights")
        src = dst
    missing = unsupported_ops(model, support)
    if missing:
        raise EdgeAsrError(f"{src.name} uses {', '.join(sorted(missing))}, which the ONNX parser of TensorRT "
                           f"{tensorrt_version} cannot import.")
    return src


def spell_out_layer_normalization(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each LayerNormalization (opset 17, axes given as attributes) in ``model`` by the
    primitive ops it stands for: (x - mean) / sqrt(mean((x - mean)^2) + epsilon) * scale + bias,
    over the axes from ``axis`` on. The new nodes carry FP32_MARK in their names, so the FP16
    engine keeps all of them in FP32, as it keeps the native op."""
    graph = model.graph
    nodes = []
    for node in graph.node:
        nodes.extend(_layer_norm_nodes(node, graph) if node.op_type == "LayerNormalization" else [node])
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _layer_norm_nodes(node: onnx.NodeProto, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axis, epsilon = attributes.get("axis", -1), attributes.get("epsilon", 1e-5)
    if axis >= 0 or len([out for out in node.output if out]) > 1:
        # torch exports axis = -len(normalized_shape) and only the output Y
        raise EdgeAsrError(f"{node.name} is a LayerNormalization with a non-negative axis or extra outputs, "
                           "which edge-asr cannot spell out for TensorRT 8.5.")
    x, scale, *bias = node.input
    prefix = f"{node.name or node.output[0]}{FP32_MARK}"
    graph.initializer.extend([numpy_helper.from_array(np.array(epsilon, np.float32), prefix + "epsilon"),
                              numpy_helper.from_array(np.array(2.0, np.float32), prefix + "two")])
    axes = list(range(axis, 0))

    def step(op: str, inputs: list[str], part: str, **attrs) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [prefix + part], name=prefix + part, **attrs)

    nodes = [
        step("ReduceMean", [x], "mean", axes=axes, keepdims=1),
        step("Sub", [x, prefix + "mean"], "centred"),
        step("Pow", [prefix + "centred", prefix + "two"], "squared"),
        step("ReduceMean", [prefix + "squared"], "variance", axes=axes, keepdims=1),
        step("Add", [prefix + "variance", prefix + "epsilon"], "variance_epsilon"),
        step("Sqrt", [prefix + "variance_epsilon"], "deviation"),
        step("Div", [prefix + "centred", prefix + "deviation"], "normalised"),
        step("Mul", [prefix + "normalised", scale], "scaled"),
    ]
    if bias and bias[0]:
        nodes.append(step("Add", [prefix + "scaled", bias[0]], "shifted"))
    nodes[-1].output[0] = node.output[0]  # the last step writes the original output: consumers stay as they are
    return nodes


def fp32_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes the FP16 engine runs in FP32: the ops compile/fp16.py keeps in fp32 (normalisation,
    softmax, powers and means whose partial sums overflow fp16), and every step of a spelt-out
    LayerNormalization."""
    return [node for node in model.graph.node if node.op_type in FP32_OPS or FP32_MARK in node.name]
