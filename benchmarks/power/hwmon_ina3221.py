"""Jetson power from the INA3221 rail monitors, read straight from sysfs (no tegrastats process).

Two layouts: JetPack 5/6 (Orin) expose each chip as hwmon with `inN_label`, `inN_input` (bus mV) and
`currN_input` (mA); JetPack 4 (Nano, Xavier) as iio with `rail_name_N` and `in_powerN_input` (mW).
The whole-board figure is the input rail where the module has one (VDD_IN, or POM_5V_IN on older
boards). AGX Xavier and AGX Orin have none, so there it is the sum of the rails, which leaves out
the carrier board and conversion losses; `describes` says which.
"""
from __future__ import annotations

from collections.abc import Callable, Collection
from functools import partial
from pathlib import Path

from edge_asr.benchmarks.power.sampler import PowerUnavailable

INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
UNCONNECTED = "NC"  # AGX Orin's second chip labels its unused channels NC


def input_rail(labels: Collection[str]) -> str | None:
    return next((name for name in INPUT_RAILS if name in labels), None)


def whole_board(rails: dict[str, float]) -> float:
    """The input rail when the module has one, else the sum of its rails."""
    name = input_rail(rails)
    return rails[name] if name else sum(rails.values())


def describe(labels: Collection[str], via: str) -> str:
    name = input_rail(labels)
    if name:
        return f"whole board input {name} ({via})"
    return (f"sum of rails {'+'.join(labels)} ({via}; this module has no input rail, so it excludes the "
            "carrier board and conversion losses)")


def _text(path: Path) -> str:
    return path.read_text().strip()


def _hwmon_watts(volts: Path, amps: Path) -> float:
    return int(_text(volts)) * int(_text(amps)) / 1e6


def _iio_watts(power: Path) -> float:
    return int(_text(power)) / 1e3


def _hwmon_rails(root: Path) -> dict[str, Callable[[], float]]:
    rails = {}
    for chip in sorted(root.glob("sys/class/hwmon/hwmon*")):
        if not (chip / "name").is_file() or _text(chip / "name") != "ina3221":
            continue
        for label_file in sorted(chip.glob("in*_label")):
            n = label_file.name.removeprefix("in").removesuffix("_label")
            volts, amps = chip / f"in{n}_input", chip / f"curr{n}_input"
            label = _text(label_file)
            if label != UNCONNECTED and volts.is_file() and amps.is_file():
                rails[label] = partial(_hwmon_watts, volts, amps)
    return rails


def _iio_rails(root: Path) -> dict[str, Callable[[], float]]:
    rails = {}
    for device in sorted(root.glob("sys/bus/i2c/drivers/ina3221x/*/iio:device*")):
        for name_file in sorted(device.glob("rail_name_*")):
            power = device / f"in_power{name_file.name.removeprefix('rail_name_')}_input"
            label = _text(name_file)
            if label != UNCONNECTED and power.is_file():
                rails[label] = partial(_iio_watts, power)
    return rails


class Ina3221Sampler:
    name = "ina3221"

    def __init__(self, root: str = "/"):
        self.root = Path(root)
        self.describes = "Jetson INA3221 rails"
        self._rails: dict[str, Callable[[], float]] = {}
        self._latest: dict[str, float] = {}

    def open(self) -> None:
        self._rails = _hwmon_rails(self.root) or _iio_rails(self.root)
        if not self._rails:
            raise PowerUnavailable("no INA3221 power monitor under /sys (not a Jetson, or its ina3221 driver "
                                   "is not loaded)")
        try:
            self.read()
        except PermissionError as err:
            raise PowerUnavailable(f"{err.filename} is not readable by this user (run as root)") from err
        except OSError as err:  # a channel the driver has disabled answers ENODATA
            raise PowerUnavailable(f"cannot read {err.filename}: {err.strerror}") from err
        self.describes = describe(self._rails, "INA3221")

    def read(self) -> float:
        self._latest = {label: watts() for label, watts in self._rails.items()}
        return whole_board(self._latest)

    def rails(self) -> dict[str, float]:
        """Watts of each rail at the latest read, for the report."""
        return dict(self._latest)

    def close(self) -> None:
        self._rails = {}
