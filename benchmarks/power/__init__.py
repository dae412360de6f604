"""Power samplers for the benchmark harness: which source a `--power` spec names, and recording them.

    samplers, missing = choose("auto", cuda=True)
    with PowerRecording(samplers, interval_s=0.1) as recording:
        ...  # the timed work
    summaries = recording.summaries() + missing
"""
from __future__ import annotations

import os
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from edge_asr.benchmarks.power.hwmon_ina3221 import Ina3221Sampler
from edge_asr.benchmarks.power.nvml import NvmlSampler
from edge_asr.benchmarks.power.rapl import RaplSampler
from edge_asr.benchmarks.power.rpi_pmic import RpiPmicSampler, no_sensor
from edge_asr.benchmarks.power.sampler import (PowerMonitor, PowerSampler, PowerSummary,  # noqa: F401
                                               PowerUnavailable, unavailable)
from edge_asr.benchmarks.power.tegrastats import TegrastatsSampler
from edge_asr.benchmarks.power.usb_meter import UsbMeterSampler

# name -> factory(option after the first ':', root of the file tree); only usb-meter and nvml take an option.
SOURCES: dict[str, Callable[[str | None, str], PowerSampler]] = {
    "ina3221": lambda option, root: Ina3221Sampler(root),
    "tegrastats": lambda option, root: TegrastatsSampler(),
    "rpi-pmic": lambda option, root: RpiPmicSampler(),
    "usb-meter": lambda option, root: UsbMeterSampler.from_option(option),
    "rapl": lambda option, root: RaplSampler(root),
    "nvml": lambda option, root: NvmlSampler(int(option or 0)),
}
TAKES_OPTION = ("usb-meter", "nvml")
AUTO_DESCRIBES = "the board's own power sensor"


def choose(spec: str, *, cuda: bool = False, root: str = "/") -> tuple[list[PowerSampler], list[PowerSummary]]:
    """The samplers to record for `spec` ("auto", "none", or a comma list such as "rapl,nvml" or
    "usb-meter:/dev/ttyUSB0"), and summaries for the sources auto-detection found unavailable.

    A source named explicitly is returned even when it cannot be read: its recording then reports why."""
    if spec == "none":
        return [], []
    if spec == "auto":
        return _auto(cuda, root)
    return [_named(item.strip(), root) for item in spec.split(",") if item.strip()], []


def _named(item: str, root: str) -> PowerSampler:
    name, _, option = item.partition(":")
    if name not in SOURCES:
        raise ValueError(f"unknown power source '{name}': use auto, none, or a comma list of {', '.join(SOURCES)}")
    if option and name not in TAKES_OPTION:
        raise ValueError(f"the power source '{name}' takes no ':' option (only {' and '.join(TAKES_OPTION)} do)")
    if name == "nvml" and option and not option.isdigit():
        raise ValueError(f"nvml takes a GPU index, as in nvml:1, not '{option}'")
    return SOURCES[name](option or None, root)


def _auto(cuda: bool, root: str) -> tuple[list[PowerSampler], list[PowerSummary]]:
    """The board's own sensor: a Jetson's INA3221 (tegrastats where sysfs fails), a Raspberry Pi 5's PMIC, a
    meter on a Raspberry Pi 4 or older, else x86 RAPL; plus NVML for a CUDA run."""
    gpu: list[PowerSampler] = [NvmlSampler()] if cuda else []
    board = _raspberry_pi(root)
    if board and re.search(r"\b5\d*$", board):  # the Pi 5, Pi 500 and Compute Module 5 have the PMIC
        return [RpiPmicSampler(), *gpu], []
    if board:
        if os.environ.get("EDGE_ASR_USB_METER"):
            return [UsbMeterSampler.from_option(os.environ["EDGE_ASR_USB_METER"]), *gpu], []
        return gpu, [unavailable("auto", no_sensor(board), AUTO_DESCRIBES)]
    tried = []
    for sampler in (Ina3221Sampler(root), TegrastatsSampler(), RaplSampler(root)):
        reason = _probe(sampler)
        if reason is None:
            return [sampler, *gpu], []
        tried.append(f"{sampler.name}: {reason}")
    return gpu, [unavailable("auto", "no power sensor found (" + "; ".join(tried) + ")", AUTO_DESCRIBES)]


def _raspberry_pi(root: str) -> str | None:
    """"Raspberry Pi 4" from the device tree's "Raspberry Pi 4 Model B Rev 1.4"; None on other machines."""
    try:
        model = Path(root, "proc/device-tree/model").read_text(errors="replace").rstrip("\0")
    except OSError:
        return None
    match = re.match(r"Raspberry Pi (Compute Module |Zero )?\d*", model)
    return match[0].strip() if match else None


def _probe(sampler: PowerSampler) -> str | None:
    """Why the sampler cannot be read, or None after opening and closing it."""
    try:
        sampler.open()
    except PowerUnavailable as err:
        return str(err)
    sampler.close()
    return None


class PowerRecording:
    """Each sampler in a PowerMonitor of its own over one with-block; summaries() after it."""

    def __init__(self, samplers: list[PowerSampler], interval_s: float = 0.1):
        self.monitors = [PowerMonitor(sampler, interval_s) for sampler in samplers]
        self._stack = ExitStack()

    def __enter__(self) -> PowerRecording:
        with ExitStack() as stack:  # closes the monitors already started if a later one raises
            for monitor in self.monitors:
                stack.enter_context(monitor)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def summaries(self) -> list[PowerSummary]:
        return [monitor.summary() for monitor in self.monitors]
