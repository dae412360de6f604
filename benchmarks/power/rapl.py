"""x86 CPU package power from Linux powercap RAPL energy counters.

Only the top-level package zones (`intel-rapl:N` named package-N) count: their sub-zones
(`intel-rapl:N:M`, core and uncore) are parts of the package, and a `psys` zone, where a laptop has
one, contains it, so adding either would count the same joules twice. AMD CPUs appear under the same
names. Since Linux 5.10 the counters are readable by root only (a side channel, CVE-2020-8694).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from edge_asr.benchmarks.power.sampler import PowerUnavailable


def _number(path: Path) -> int:
    return int(path.read_text().strip())


class RaplSampler:
    name = "rapl"

    def __init__(self, root: str = "/", clock: Callable[[], float] = time.monotonic):
        self.root, self.clock = Path(root), clock
        self.describes = "CPU package (RAPL)"
        self._zones: list[Path] = []
        self._ranges: list[int] = []
        self._previous: tuple[float, list[int]] | None = None

    def open(self) -> None:
        zones = [zone for zone in sorted(self.root.glob("sys/class/powercap/intel-rapl:*"))
                 if zone.name.count(":") == 1 and (zone / "name").read_text().startswith("package")]
        if not zones:
            raise PowerUnavailable("no RAPL powercap interface (not an Intel/AMD x86 Linux host, or the "
                                   "intel_rapl module is not loaded)")
        try:
            self._ranges = [_number(zone / "max_energy_range_uj") for zone in zones]
            for zone in zones:
                _number(zone / "energy_uj")
        except PermissionError as err:
            raise PowerUnavailable(f"{err.filename} is readable by root only (run as root, or chmod a+r it)") from err
        self._zones, self._previous = zones, None
        if len(zones) > 1:
            self.describes = f"CPU packages {'+'.join((z / 'name').read_text().strip() for z in zones)} (RAPL)"

    def read(self) -> float | None:
        """Mean watts since the previous read; None on the first, which only starts the count."""
        now, energy = self.clock(), [_number(zone / "energy_uj") for zone in self._zones]
        previous, self._previous = self._previous, (now, energy)
        if previous is None or now <= previous[0]:
            return None
        # A counter that wrapped past max_energy_range_uj reads lower than before: the modulo adds the range back.
        microjoules = sum((e - p) % r for e, p, r in zip(energy, previous[1], self._ranges, strict=True))
        return microjoules / 1e6 / (now - previous[0])

    def close(self) -> None:
        self._zones = []
