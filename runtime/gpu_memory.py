"""This process's GPU memory through NVML (pynvml, imported when asked): for `serve`'s /metrics and the
benchmarks. None wherever NVML cannot say."""
from __future__ import annotations

import os


def gpu_memory_used_mb(index: int = 0, pid: int | None = None, nvml_module=None) -> float | None:
    """GPU memory in MiB that process `pid` (this one by default) holds on GPU `index`, or None when NVML cannot
    say: not installed, no driver, the process has no context there, or a container whose PIDs NVML does not see."""
    pid = os.getpid() if pid is None else pid
    nvml = nvml_module
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        return None
    try:
        processes = nvml.nvmlDeviceGetComputeRunningProcesses(nvml.nvmlDeviceGetHandleByIndex(index))
        used = next((p.usedGpuMemory for p in processes if p.pid == pid), None)
        return used / 2**20 if used is not None else None
    except nvml.NVMLError:
        return None
    finally:
        nvml.nvmlShutdown()
