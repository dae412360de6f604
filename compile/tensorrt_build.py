"""TensorRT FP16 engines for Jetson, built from the exported ONNX graphs on the board that runs them.

A TensorRT plan runs only on the TensorRT version and the GPU it was built with, so
`edge-asr compile --target jetson-orin|jetson-xavier` runs on the Jetson itself, where JetPack
provides the tensorrt Python package. Each graph becomes one plan with one optimization profile
(tensorrt_profiles.py); TensorRT picks FP16 kernels except for the nodes tensorrt_onnx.fp32_nodes
names, which it must run in FP32; the kernel timings go to a timing cache kept per TensorRT version
and GPU, so the next build on the board skips most of the timing. The checks that need no TensorRT
(ops, profiles, FP32 nodes) live in tensorrt_onnx.py and tensorrt_profiles.py.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import onnx

from edge_asr.compile.tensorrt_onnx import fp32_nodes, graph_for_tensorrt
from edge_asr.compile.tensorrt_profiles import axis_ranges, graph_input_dims, manifest_shapes, profile_shapes
from edge_asr.runtime.bundle_cache import cache_root
from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.errors import EdgeAsrError

# The GPU architecture of each Jetson target: Orin's Ampere GPU is sm_87, Xavier's Volta GPU sm_72.
TARGET_COMPUTE_CAPABILITY = {"jetson-orin": "8.7", "jetson-xavier": "7.2"}


def build_tensorrt(encoder_onnx: Path, decoder_onnx: Path, work: Path, target: str, dims: ModelDims,
                   log) -> tuple[dict[str, Path], dict]:
    """Build encoder.plan and decoder.plan into ``work`` from the fp32 ONNX graphs; returns the
    files and the manifest's additions (TensorRT version and GPU, FP32 layers, shapes)."""
    trt = _import_tensorrt()
    from edge_asr.runtime.engines.tensorrt import load_backend, tensorrt_platform

    platform = tensorrt_platform(trt, load_backend()[1])
    refusal = target_refusal(target, platform)
    if refusal:
        raise EdgeAsrError(refusal)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    timing_path = timing_cache_path(platform)
    # A timing cache is made by a builder config but belongs to none: both graphs' builds share it.
    timing_cache = builder.create_builder_config().create_timing_cache(
        timing_path.read_bytes() if timing_path.is_file() else b"")
    ranges = axis_ranges(dims)
    files, fp32 = {}, {}
    for role, onnx_path in (("encoder", encoder_onnx), ("decoder", decoder_onnx)):
        log(f"building the TensorRT FP16 {role} engine (TensorRT {platform['version']}, {platform['device']})")
        graph = graph_for_tensorrt(onnx_path, work / f"{role}.tensorrt.onnx", platform["version"])
        shapes = profile_shapes(graph_input_dims(graph), ranges[role])
        files[role], fp32[role] = _build_plan(trt, builder, logger, graph, shapes, timing_cache,
                                              work / f"{role}.plan", log)
    timing_path.parent.mkdir(parents=True, exist_ok=True)
    timing_path.write_bytes(timing_cache.serialize())
    tensorrt = {**platform, "timing_cache": str(timing_path), "fp32_layers": fp32}
    return files, {"tensorrt": tensorrt, "shapes": manifest_shapes(ranges)}


def _import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError:
        raise EdgeAsrError("building a TensorRT engine needs the tensorrt Python package, which JetPack installs on "
                           "the Jetson itself: run `edge-asr compile --target jetson-...` there.") from None
    return tensorrt


def target_refusal(target: str, platform: dict) -> str | None:
    """Why engines for ``target`` cannot be built on this GPU, or None: a plan only runs on the GPU
    architecture it was built on."""
    wanted = TARGET_COMPUTE_CAPABILITY.get(target)
    if wanted is None:
        targets = ", ".join(TARGET_COMPUTE_CAPABILITY)
        return f"target {target!r} has no TensorRT engines; the TensorRT targets are {targets}."
    if platform["compute_capability"] != wanted:
        return (f"engines for {target} must be built on the {target} itself (a GPU of compute capability {wanted}); "
                f"this machine's GPU is {platform['device']} ({platform['compute_capability']}).")
    return None


def timing_cache_path(platform: dict) -> Path:
    """Where kernel timings of this TensorRT and GPU are kept between builds (TensorRT rejects a
    cache from another version or GPU, hence one file per pair)."""
    device = "".join(c if c.isalnum() else "-" for c in platform["device"])
    return cache_root() / "tensorrt" / f"timing-{platform['version']}-{device}-sm{platform['compute_capability']}.cache"


def _build_plan(trt: ModuleType, builder, logger, graph: Path, shapes: dict, timing_cache, plan: Path,
                log) -> tuple[Path, dict]:
    network, parser = _parse(trt, builder, logger, graph)  # the parser owns weights the network refers to
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    # Obey, not prefer: the FP32 nodes are what keeps the FP16 engine from overflowing.
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    # The cache file is per TensorRT version and GPU; were it from another GPU anyway, TensorRT would
    # not use it (and say so), and the build would time every kernel afresh.
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    fp32 = keep_fp32_layers(trt, network, onnx.load(str(graph), load_external_data=False), log)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgeAsrError(f"TensorRT could not build an engine from {graph.name} (its log above says why).")
    plan.write_bytes(serialized)
    del parser  # only now: the network needed the parser's weights until the engine was built
    return plan, fp32


def _parse(trt: ModuleType, builder, logger, graph: Path) -> tuple:
    # TensorRT 8 needs the explicit-batch flag for ONNX networks; TensorRT 10 has only explicit batch
    # and deprecates the flag.
    flags = (0 if int(trt.__version__.split(".")[0]) >= 10
             else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):  # from the file: it finds external weights beside it
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgeAsrError(f"TensorRT's ONNX parser rejected {graph.name}: {errors}")
    return network, parser


def keep_fp32_layers(trt: ModuleType, network, model: onnx.ModelProto, log) -> dict:
    """Constrain to FP32 the layers computing the FP32 nodes' outputs. The parser keeps ONNX value
    names on the tensors it makes, so a layer is found by the name of its output."""
    nodes = fp32_nodes(model)
    wanted = {output for node in nodes for output in node.output}
    made, layers = set(), 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not any(tensor.name in wanted for tensor in outputs):
            continue
        layer.precision = trt.float32
        for j, tensor in enumerate(outputs):
            layer.set_output_type(j, trt.float32)
            made.add(tensor.name)
        layers += 1
    missing = sorted(wanted - made)
    if missing:
        log(f"warning: no TensorRT layer makes {len(missing)} of the {len(wanted)} outputs to keep in FP32 "
            f"(e.g. {missing[0]}): those layers may run in FP16")
    return {"onnx_nodes": len(nodes), "tensorrt_layers": layers}
