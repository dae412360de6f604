"""Build a bundle's TVM modules: each exported ONNX graph becomes a Relax module compiled for one CPU.

Relax's ONNX importer loses our graphs' shapes where they are dynamic (the Range behind the attention
mask gets a fresh symbolic length, and a concat of two unknown shapes cannot be lowered), and TVM is at
its best with static shapes anyway. So each graph is fixed to static shapes and constant-folded by
onnxruntime first, and the decoder is built in two static variants that share one set of weights: a
one-token step, and a prompt chunk of PROMPT_CHUNK tokens (longer prompts run chunk by chunk).

A stock model's encoder takes the full 30 s window. A model that needs no 30 s padding is built for
each of a few window lengths (WINDOW_BUCKETS): an encoder per bucket, and a step and prompt per bucket
for the audio context that bucket makes (half its frames), since the cross-attention keys and values
have the bucket's length. The runtime pads a window to the smallest bucket that holds it: such a
model was trained on its audio plus a margin of silence, and takes more silence as well.

Weights stay out of the compiled code (lifted to function inputs): the variants of a graph take the same
arrays where folding left them alike, saved once per graph in ``ROLE.params.npz``; the runtime loads
them once and passes them on every call. A graph's files: ``ROLE.so`` (the Relax executable, an ELF for
the target's CPU) and ``ROLE.params.npz``; its manifest entry lists each function's input names and the
weights' order, and a function whose weights differ (a shorter encoder's folded slice of the
positional embedding) lists its own.
"""
from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.threads import Threads
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.windows import WindowPolicy

if TYPE_CHECKING:
    import tvm

    from edge_asr.compile.tvm_tuning import TuningRequest

PROMPT_CHUNK = 16  # tokens per prompt pass: a prompt of sot + language + task is 1-4 tokens, with
# the previous text up to 224; 16 covers the usual prompt in one pass at ~10x the cost of a step.

# Encoder windows (Mel frames, 100 a second) a model that needs no 30 s padding is built for, besides its
# full window: each bucket is one more encoder and decoder pair to compile, and a window is padded up to
# the next bucket, so a few cover short utterances without paying the full 30 s for them.
WINDOW_BUCKETS = (1000, 2000)

WEIGHT_MIN_ELEMENTS = 1024  # smaller initializers are folded shapes and indices: they stay constants
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)

CROSS_COMPILER = "aarch64-linux-gnu-g++"  # Debian's gcc-aarch64-linux-gnu / g++-aarch64-linux-gnu


@dataclass(frozen=True)
class TvmTarget:
    """A bundle target built with TVM: the LLVM target and, when it is not this machine, the cross linker."""

    llvm: dict
    cross_compiler: str | None = None


def tvm_target(name: str) -> TvmTarget:
    """The TVM target for a bundle target name: rpi4 (Cortex-A72 with NEON) or tvm-x86 (this host's CPU)."""
    if name == "rpi4":
        llvm = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"],
                "num-cores": 4}
        return TvmTarget(llvm, None if platform.machine() == "aarch64" else CROSS_COMPILER)
    if name == "tvm-x86":
        if platform.machine() != "x86_64":
            raise EdgeAsrError(f"target tvm-x86 builds for this machine's CPU, and this machine is {platform.machine()}.")
        from tvm.target import codegen

        return TvmTarget({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count() or 1})
    raise EdgeAsrError(f"{name} is not a TVM target (rpi4, tvm-x86).")


@dataclass(frozen=True)
class Variant:
    """One compiled function of a graph: its name in the module and the values of the graph's dynamic axes."""

    function: str
    axes: dict[str, int]


def window_buckets(dims: ModelDims, policy: WindowPolicy) -> tuple[int, ...]:
    """The encoder window lengths to build, longest (the model's full window) first."""
    full = 2 * dims.n_audio_ctx
    if policy.needs_30s_padding:
        return (full,)
    return (full, *sorted((b for b in WINDOW_BUCKETS if b < full), reverse=True))


def variants(role: str, dims: ModelDims, buckets: tuple[int, ...] | None = None) -> list[Variant]:
    """The graph's functions for each window bucket (default: the full window alone). The full window's
    keep the plain names (encode, step, prompt), the others add their frames (encode_1000, step_1000...)."""
    full = 2 * dims.n_audio_ctx
    found = []
    for frames in buckets or (full,):
        suffix = "" if frames == full else f"_{frames}"
        if role == "encoder":
            found.append(Variant(f"encode{suffix}", {"batch": 1, "frames": frames}))
            continue
        audio = {"batch": 1, "audio_ctx": frames // 2}
        found += [Variant(f"step{suffix}", audio | {"n_tokens": 1, "k": 1}),
                  Variant(f"prompt{suffix}", audio | {"n_tokens": PROMPT_CHUNK, "k": 2})]
    return found


def static_graph(onnx_path: Path, axes: dict[str, int], out: Path) -> Path:
    """``onnx_path`` with its dynamic axes fixed and every shape computation folded into constants."""
    model = onnx.load(str(onnx_path))
    for axis, value in axes.items():
        make_dim_param_fixed(model.graph, axis, value)
    fixed = out.with_suffix(".fixed.onnx")
    onnx.save(onnx.shape_inference.infer_shapes(model), str(fixed))
    options = Threads().helper_options()  # joins the process's shared pool when an engine has made one
    # Basic level: constant folding and redundant-node removal only, all in standard ONNX operators.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(fixed), options, providers=["CPUExecutionProvider"])
    fixed.unlink()
    return out


@dataclass
class RelaxGraph:
    """A graph's static variants as one Relax module, with their weights apart."""

    module: "tvm.IRModule"
    weights: dict[str, np.ndarray]  # every function's, each array once
    inputs: dict[str, list[str]]  # function -> its input names, in order
    axes: dict[str, dict[str, int]]  # function -> the static values of the graph's dynamic axes
    function_weights: dict[str, list[str]]  # function -> the weights it takes after its inputs, in order


def import_graph(onnx_path: Path, graph_variants: list[Variant], work: Path) -> RelaxGraph:
    """Import each static variant of ``onnx_path`` into one Relax module whose functions share the weights
    that folded alike; a weight that folded otherwise than an earlier variant's is renamed FUNCTION:NAME."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    functions, inputs, function_weights = {}, {}, {}
    weights: dict[str, np.ndarray] = {}
    for variant in graph_variants:
        folded = static_graph(onnx_path, variant.axes, work / f"{onnx_path.stem}.{variant.function}.onnx")
        model = onnx.load(str(folded))
        folded.unlink()
        names = [i.name for i in model.graph.input]
        taken = []
        for name, array in _weights_as_inputs(model).items():
            if name in weights and not _same_array(weights[name], array):
                name = _rename_input(model.graph, name, f"{variant.function}:{name}")
            weights.setdefault(name, array)
            taken.append(name)
        main = from_onnx(model)["main"]
        functions[variant.function] = main.with_attr("global_symbol", variant.function)
        inputs[variant.function] = names
        function_weights[variant.function] = taken
    return RelaxGraph(tvm.IRModule(functions), weights, inputs, {v.function: v.axes for v in graph_variants},
                      function_weights)


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> str:
    """Rename the graph input ``old`` where it is declared and wherever a node reads it."""
    for value in graph.input:
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
    return new


def _weights_as_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Turn the model's float weights into graph inputs after its own inputs, sorted by name; return them.

    The importer's keep_params_in_input would lift every initializer, the folded shape constants
    included, which Relax then no longer sees as constants.
    """
    graph = model.graph
    lifted = sorted((t for t in graph.initializer if t.data_type in FLOAT_TYPES
                     and int(np.prod(t.dims)) >= WEIGHT_MIN_ELEMENTS), key=lambda t: t.name)
    for tensor in lifted:
        graph.initializer.remove(tensor)
        graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return {t.name: numpy_helper.to_array(t) for t in lifted}


def fused_kernels(module: "tvm.IRModule") -> "tvm.IRModule":
    """Relax operators lowered to TIR kernels and fused: what tuning measures and the build schedules."""
    import tvm
    from tvm import relax

    return tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ])(module)


def build_library(graph: RelaxGraph, target: TvmTarget, out: Path, database_dir: Path | None, log) -> Path:
    """Compile the module for ``target`` (with the tuned schedules in ``database_dir``, when given) into ``out``."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
    from tvm.s_tir import dlight

    llvm = tvm.target.Target(target.llvm)
    database = tuning_database(database_dir) if database_dir and _record_count(database_dir) else None

    @tvm.transform.module_pass(opt_level=3)
    def pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = fused_kernels(mod)
        if database is not None:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        # Matrix-vector products and reductions the database does not cover get dlight's CPU rules.
        mod = dlight.ApplyDefaultSchedule(dlight.cpu.GEMV(), dlight.cpu.Reduction())(mod)
        return tvm.transform.Sequential(cpu_pipeline.dataflow_lower_passes(llvm)
                                        + cpu_pipeline.finalize_passes(llvm))(mod)

    log(f"compiling {out.stem} for {target.llvm.get('mtriple', 'this host')} ({target.llvm['mcpu']})"
        + (" with tuned schedules" if database is not None else ", untuned"))
    with llvm, tvm.transform.PassContext(opt_level=3), database or contextlib.nullcontext():
        executable = relax.build(graph.module, target=llvm, relax_pipeline=pipeline)
    _export(executable, out, target)
    return out


def tuning_database(database_dir: Path):
    """MetaSchedule's JSON database in ``database_dir`` (made when missing): what tuning adds to and builds apply."""
    from tvm.s_tir import meta_schedule

    return meta_schedule.database.JSONDatabase(work_dir=str(database_dir))


def _export(executable, out: Path, target: TvmTarget) -> None:
    if target.cross_compiler is None:
        executable.export_library(str(out))
        return
    import shutil

    from tvm.support import cc

    if shutil.which(target.cross_compiler) is None:
        raise EdgeAsrError(f"cross-linking for aarch64 needs {target.cross_compiler}: "
                           "apt install g++-aarch64-linux-gnu (Debian/Ubuntu).")
    executable.export_library(str(out), fcompile=cc.cross_compiler(target.cross_compiler))


def build_tvm(graphs: dict[str, Path], work: Path, target_name: str, dims: ModelDims, policy: WindowPolicy,
              database_dir: Path, tuning: TuningRequest | None, log) -> tuple[dict[str, Path], dict]:
    """The bundle files and manifest entries of a TVM target, from the exported fp32 ONNX graphs.

    Schedules already in ``database_dir`` are applied; with ``tuning``, the graphs are tuned into it first.
    """
    import tvm

    target = tvm_target(target_name)
    buckets = window_buckets(dims, policy)
    files, entries = {}, {}
    for role, onnx_path in graphs.items():
        log(f"importing the {role} into TVM Relax" + (f", windows of {buckets} frames" if len(buckets) > 1 else ""))
        graph = import_graph(onnx_path, variants(role, dims, buckets), work)
        if tuning is not None:
            from edge_asr.compile.tvm_tuning import tune

            tune(graph, target, database_dir, tuning, log)
        files[role] = build_library(graph, target, work / f"{role}.so", database_dir, log)
        files[f"{role}_weights"] = work / f"{role}.params.npz"
        np.savez(files[f"{role}_weights"], **graph.weights)
        entries[role] = _manifest_entry(graph)
    records = _record_count(database_dir)
    return files, {"tvm": {"version": tvm.__version__, "llvm_target": target.llvm,
                           "tuning_records": records, "database": str(database_dir) if records else None,
                           "window_buckets": list(buckets), **entries}}


def _manifest_entry(graph: RelaxGraph) -> dict:
    """A graph's functions with their inputs and axes, and the weights they take: the first function's for
    all (what a runtime that knows only the full window's functions passes), and its own where one differs."""
    first, *_ = graph.inputs
    shared = graph.function_weights[first]
    functions = {}
    for name, inputs in graph.inputs.items():
        functions[name] = {"inputs": inputs, "axes": graph.axes[name]}
        if graph.function_weights[name] != shared:
            functions[name]["weights"] = graph.function_weights[name]
    return {"weights": shared, "functions": functions}


def _record_count(database_dir: Path) -> int:
    records = database_dir / "database_tuning_record.json"
    if not records.is_file():
        return 0
    with open(records) as f:
        return sum(1 for line in f if line.strip())
