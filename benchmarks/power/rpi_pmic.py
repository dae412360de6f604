"""Raspberry Pi 5 power from its PMIC's ADC, as `vcgencmd pmic_read_adc` prints it.

Each rail appears twice, `VDD_CORE_A current(7)=1.08053000A` and `VDD_CORE_V volt(15)=0.72178200V`;
the numbers in brackets are ADC channels, not rail numbers, so rails pair by name. The sum covers the
rails the PMIC makes, not the 5 V input (EXT5V_V has no current): USB peripherals and the PMIC's own
conversion losses are missing, so it reads lower than a meter on the supply.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence

from edge_asr.benchmarks.power.sampler import PowerUnavailable

READING = re.compile(r"^\s*(\w+)_([AV]) \w+\(\d+\)=(\d+(?:\.\d+)?)[AV]\s*$", re.MULTILINE)
METER_FIX = "attach a USB power meter and pass --power usb-meter:/dev/ttyUSB0"


def no_sensor(board: str) -> str:
    return f"{board} has no power sensor: {METER_FIX}"


def parse_pmic(text: str) -> dict[str, float]:
    """{rail: watts} for every rail with both a current and a voltage."""
    values: dict[str, dict[str, float]] = {"A": {}, "V": {}}
    for rail, unit, value in READING.findall(text):
        values[unit][rail] = float(value)
    return {rail: amps * values["V"][rail] for rail, amps in values["A"].items() if rail in values["V"]}


class RpiPmicSampler:
    name = "rpi-pmic"
    describes = ("Raspberry Pi 5 PMIC rails sum, not the 5 V input (excludes USB peripherals and "
                 "5V conversion losses)")

    def __init__(self, command: Sequence[str] = ("vcgencmd", "pmic_read_adc")):
        self.command = list(command)
        self._latest: dict[str, float] = {}

    def open(self) -> None:
        if shutil.which(self.command[0]) is None:
            raise PowerUnavailable(f"{self.command[0]} is not on PATH (not a Raspberry Pi, or Raspberry Pi OS's "
                                   "raspi-utils is not installed)")
        try:
            self.read()
        except (OSError, subprocess.SubprocessError) as err:
            raise PowerUnavailable(str(err)) from err

    def read(self) -> float:
        done = subprocess.run(self.command, capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL)
        self._latest = parse_pmic(done.stdout)
        if not self._latest:
            said = (done.stdout.strip() or done.stderr.strip() or "nothing").splitlines()[0]
            raise OSError(f"{' '.join(self.command)} reports no rail currents ({said}): only a Raspberry Pi 5 "
                          f"has a PMIC that measures them; {METER_FIX}")
        return sum(self._latest.values())

    def rails(self) -> dict[str, float]:
        """Watts of each rail at the latest read, for the report."""
        return dict(self._latest)

    def close(self) -> None:
        pass
