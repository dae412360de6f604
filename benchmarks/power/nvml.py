"""NVIDIA GPU board power through NVML (pynvml, imported when used); this process's GPU memory is
runtime/gpu_memory.py's.

On Ampere and newer GPUs (except the A100) NVML's power reading is a 1-second average, so a run of a
few seconds has its start smoothed and its peak lowered; the mean over a longer run is unaffected.
"""
from __future__ import annotations

from edge_asr.benchmarks.power.sampler import PowerUnavailable


def _nvml(module=None):
    if module is not None:
        return module
    try:
        import pynvml
    except ImportError as err:
        raise PowerUnavailable("pynvml is not installed (pip install nvidia-ml-py)") from err
    return pynvml


class NvmlSampler:
    def __init__(self, index: int = 0, nvml_module=None):
        self.index, self.nvml_module = index, nvml_module
        self.name = "nvml" if index == 0 else f"nvml:{index}"
        self.describes = f"NVIDIA GPU {index} board power (NVML)"
        self._nvml = self._handle = None

    def open(self) -> None:
        nvml = _nvml(self.nvml_module)
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            raise PowerUnavailable(f"NVML cannot start ({err}): no NVIDIA driver on this machine") from err
        try:
            self._handle, gpu = self._device(nvml)
        except PowerUnavailable:
            nvml.nvmlShutdown()
            raise
        self._nvml = nvml
        self.describes = f"GPU {self.index} {gpu} board power (NVML)"

    def _device(self, nvml) -> tuple[object, str]:
        """The GPU's handle and name, once a first power reading has shown that NVML can give one."""
        try:
            count = nvml.nvmlDeviceGetCount()
            if self.index >= count:
                raise PowerUnavailable(f"there is no GPU {self.index}: NVML sees {count}")
            handle = nvml.nvmlDeviceGetHandleByIndex(self.index)
            gpu = nvml.nvmlDeviceGetName(handle)
            nvml.nvmlDeviceGetPowerUsage(handle)
        except nvml.NVMLError as err:
            raise PowerUnavailable(f"NVML cannot read GPU {self.index}'s power: {err}") from err
        return handle, gpu.decode() if isinstance(gpu, bytes) else gpu

    def read(self) -> float:
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1e3

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.nvmlShutdown()
            self._nvml = None
