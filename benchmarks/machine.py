"""The machine a benchmark result came from, so that a reader (and the CI gate) knows what it compares.

Everything comes from files and the Python standard library, not from tools that may be absent on a
lean board image (lscpu, nvidia-smi): a missing file gives null, never an exception. Files are read
below `root` so that tests can describe a Raspberry Pi or a Jetson with a fake tree.
"""
from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path

# (CPU implementer, CPU part) from /proc/cpuinfo: ARM kernels give no "model name" for these cores.
ARM_CORES = {
    ("0x41", "0xd03"): "ARM Cortex-A53",
    ("0x41", "0xd05"): "ARM Cortex-A55",
    ("0x41", "0xd07"): "ARM Cortex-A57",
    ("0x41", "0xd08"): "ARM Cortex-A72",
    ("0x41", "0xd0b"): "ARM Cortex-A76",
    ("0x41", "0xd42"): "ARM Cortex-A78AE",
    ("0x4e", "0x004"): "NVIDIA Carmel",
}
# Distributions whose versions explain a timing: the runtime, its backends and the peers it is measured against.
LIBRARIES = ("edge-asr", "numpy", "onnxruntime", "onnxruntime-gpu", "tokenizers", "soundfile",
             "faster-whisper", "ctranslate2", "apache-tvm", "tensorrt", "torch")


def machine_record(root: str = "/", gpu: str | None = None) -> dict:
    """The machine as a JSON-ready dict; `gpu` is the GPU's name where the caller knows it (e.g. from NVML)."""
    cpuinfo = _cpuinfo(_read(root, "proc/cpuinfo") or "")
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(cpuinfo),
        "cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "memory_mb": _memory_mb(_read(root, "proc/meminfo") or ""),
        "board": _board(root, cpuinfo),
        "l4t": _l4t(_read(root, "etc/nv_tegra_release") or ""),
        "gpu": gpu,
        "libraries": {name: _version(name) for name in LIBRARIES},
    }


def _read(root: str, relative: str) -> str | None:
    try:
        return Path(root, relative).read_text(errors="replace")
    except OSError:
        return None


def _cpuinfo(text: str) -> dict[str, list[str]]:
    """Every value of each `key : value` line, in order: one entry per core for per-core keys."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip(), []).append(value.strip())
    return fields


def _cpu_model(cpuinfo: dict[str, list[str]]) -> str | None:
    """x86's "model name"; on ARM the named cores ("ARM Cortex-A55 + ARM Cortex-A76" on big.LITTLE).

    The core table goes first because 32-bit ARM kernels give a "model name" such as "ARMv7 Processor
    rev 3 (v7l)", which does not say which core it is."""
    implementers, parts = cpuinfo.get("CPU implementer", []), cpuinfo.get("CPU part", [])
    cores = [(i.lower(), p.lower()) for i, p in zip(implementers, parts, strict=False)]  # a field may be missing
    known = [ARM_CORES[core] for core in cores if core in ARM_CORES]
    if known:
        return " + ".join(dict.fromkeys(known))
    if "model name" in cpuinfo:
        return cpuinfo["model name"][0]
    return f"ARM implementer {cores[0][0]} part {cores[0][1]}" if cores else None


def _usable_cores() -> int | None:
    """Cores this process may run on: fewer than `cores` under taskset or a container's cpuset."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count()


def _memory_mb(meminfo: str) -> int | None:
    match = re.search(r"^MemTotal:\s*(\d+)\s*kB", meminfo, re.MULTILINE)
    return int(match[1]) // 1024 if match else None


def _board(root: str, cpuinfo: dict[str, list[str]]) -> str | None:
    """The device tree's model (Raspberry Pi, Jetson, Rockchip boards), else the Pi kernel's "Model" line."""
    model = (_read(root, "proc/device-tree/model") or "").rstrip("\0").strip()
    return model or cpuinfo.get("Model", [None])[0]


def _l4t(release: str) -> str | None:
    """"# R35 (release), REVISION: 4.1, ..." from /etc/nv_tegra_release as "R35.4.1"."""
    match = re.match(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release)
    return f"R{match[1]}.{match[2]}" if match else None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
