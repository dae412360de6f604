"""MetaSchedule tuning of a bundle's TVM modules: on this host for a host target, through a TVM RPC
tracker against a real board for ARM. The database (a directory of two JSON files) is kept beside the
bundle and reused: a later compile applies it, and a later tuning run adds to it.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from edge_asr.compile.tvm_build import RelaxGraph, TvmTarget, fused_kernels, tuning_database, tvm_target
from edge_asr.runtime.errors import EdgeAsrError


@dataclass(frozen=True)
class RpcTracker:
    """A TVM RPC tracker with the board registered under ``key`` (python -m tvm.exec.rpc_server --key KEY)."""

    host: str
    port: int
    key: str = "rpi4"

    @classmethod
    def parse(cls, text: str, key: str) -> "RpcTracker":
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            raise EdgeAsrError(f"--rpc wants HOST:PORT of a TVM RPC tracker, not {text!r}.")
        return cls(host, int(port), key)


TRIALS_PER_ROUND = 32  # candidates per kernel and round; MetaSchedule's 64 spent a 1000-trial budget on
# the first round alone for the encoder's 20 kernels, leaving none for the kernels that matter.


@dataclass(frozen=True)
class TuningRequest:
    """--tune: ``trials`` MetaSchedule measurements per graph, on this host or on the board behind ``rpc``."""

    trials: int
    rpc: RpcTracker | None = None

    def check(self, target_name: str) -> None:
        """Refuse, before any work, to tune for another CPU on this host."""
        if tvm_target(target_name).cross_compiler is not None and self.rpc is None:
            raise EdgeAsrError("tuning for another CPU measures on the board itself: give --rpc HOST:PORT of a TVM "
                               "RPC tracker the board is registered with (or build untuned, without --tune).")


def tune(graph: RelaxGraph, target: TvmTarget, database_dir: Path, request: TuningRequest, log) -> None:
    """Tune every kernel of ``graph`` with ``request.trials`` measurements in all, adding them to ``database_dir``."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    trials, rpc = request.trials, request.rpc
    database_dir.mkdir(parents=True, exist_ok=True)
    llvm = tvm.target.Target(target.llvm)
    with llvm:
        kernels = fused_kernels(graph.module)
    tasks = ms.relax_integration.extract_tasks(kernels, llvm)
    log(f"tuning {len(tasks)} kernels with {trials} trials on "
        + (f"the board behind {rpc.host}:{rpc.port} (key {rpc.key})" if rpc else "this host")
        + f"; database {database_dir}")
    builder = ms.builder.LocalBuilder(f_build=_build_candidate, timeout_sec=BUILD_TIMEOUT_S,
                                      f_export=_cross_exporter(target.cross_compiler) if rpc else None)
    runner = "local"
    if rpc is not None:
        runner = ms.runner.RPCRunner(ms.runner.RPCConfig(rpc.host, rpc.port, rpc.key, session_timeout_sec=120))
    with tempfile.TemporaryDirectory(prefix="edge-asr-tune-") as logs:  # MetaSchedule's per-task logs
        ms.relax_integration.tune_relax(
            mod=kernels, params={}, target=llvm, work_dir=logs, max_trials_global=trials,
            num_trials_per_iter=TRIALS_PER_ROUND, builder=builder, runner=runner,
            database=tuning_database(database_dir), seed=0,
        )


BUILD_TIMEOUT_S = 60


def _build_candidate(mod, target, _params):
    """MetaSchedule's default candidate build without its import of every tensor intrinsic.

    That import took 45 s on this 2-core host, in each builder process, and MetaSchedule starts new
    builder processes for every batch of candidates: with its 30 s timeout, every build failed.
    fp32 CPU kernels use no tensor intrinsics.
    """
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _cross_exporter(compiler: str | None):
    """Each candidate kernel is linked with the board's toolchain before it is sent to the board."""
    def export(module) -> str:
        from tvm.support import cc

        path = tempfile.mkstemp(suffix=".so", prefix="edge-asr-candidate-")[1]
        module.export_library(path, fcompile=cc.cross_compiler(compiler) if compiler else None)
        return path

    return export
