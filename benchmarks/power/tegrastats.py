"""Jetson power from a running `tegrastats`, where the INA3221 sysfs files are missing or unreadable.

tegrastats prints one line per interval with each rail as current/average in mW: `VDD_IN 5123mW/5000mW`
on JetPack 5/6, `POM_5V_IN 3000/2900` (no unit) on JetPack 4. A reader thread keeps the newest line,
so a slow poll never blocks on the pipe and never works through a backlog of old lines.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Sequence

from edge_asr.benchmarks.power.hwmon_ina3221 import UNCONNECTED, describe, whole_board
from edge_asr.benchmarks.power.sampler import PowerUnavailable

# A rail and its current/average; the lookahead keeps `RAM 779/7620MB` and `SWAP 0/3810MB` out.
RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/\d+(?:mW)?(?=\s|$)")


def parse_rails(line: str) -> dict[str, float]:
    """{rail: current watts} from one tegrastats line, in the order printed."""
    return {name: int(milliwatts) / 1e3 for name, milliwatts in RAIL.findall(line) if name != UNCONNECTED}


class TegrastatsSampler:
    name = "tegrastats"

    def __init__(self, interval_ms: int = 100, command: Sequence[str] | None = None, first_line_s: float = 3.0):
        self.command = list(command or ["tegrastats", "--interval", str(interval_ms)])
        self.first_line_s = first_line_s
        self.describes = "Jetson rails (tegrastats)"
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._started = threading.Event()  # set by the first line with rails, or when the output ends
        self._unread: dict[str, float] | None = None
        self._latest: dict[str, float] = {}

    def open(self) -> None:
        if shutil.which(self.command[0]) is None:
            raise PowerUnavailable(f"{self.command[0]} is not on PATH (JetPack installs it on Jetson boards only)")
        self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         stdin=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._follow, name="tegrastats-reader", daemon=True)
        self._reader.start()
        self._started.wait(self.first_line_s)
        if self._unread is None:
            self.close()
            raise PowerUnavailable(f"{' '.join(self.command)} printed no power rails in {self.first_line_s:.0f} s")
        self.describes = describe(self._unread, "tegrastats")

    def _follow(self) -> None:
        for line in self._process.stdout:
            rails = parse_rails(line)
            if rails:
                with self._lock:
                    self._unread = rails
                self._started.set()
        self._started.set()

    def read(self) -> float | None:
        with self._lock:
            rails, self._unread = self._unread, None
        if rails is None:
            return None
        self._latest = rails
        return whole_board(rails)

    def rails(self) -> dict[str, float]:
        """Watts of each rail at the latest read, for the report."""
        return dict(self._latest)

    def close(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._reader.join()
            self._process.stdout.close()
            self._process = None
