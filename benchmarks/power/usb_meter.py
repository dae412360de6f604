"""An external USB power meter on a serial port: the only whole-board figure for a Raspberry Pi 4.

Two protocols. RDTech UM24C/UM25C/UM34C (USB serial or Bluetooth rfcomm, 9600 baud): send 0xF0, get
a 130-byte record whose bytes 0-1 are the model and 6-9 the power, big-endian, in mW on every model
(voltage and current, at 2-3 and 4-5, have a finer scale on the UM25C; the power field does not).
"line": a meter or logger that prints lines holding a watts figure, `5.12W`, `5120mW` or `P=5.12`.

    --power usb-meter:/dev/ttyUSB0            RDTech record protocol
    --power usb-meter:/dev/rfcomm0:um25c      the same (um24c, um25c, um34c name it too)
    --power usb-meter:/dev/ttyACM0:line       line protocol, 115200 baud
"""
from __future__ import annotations

import os
import re
from typing import Callable

from edge_asr.benchmarks.power.sampler import PowerUnavailable

BAUD = {"rdtech": 9600, "um24c": 9600, "um25c": 9600, "um34c": 9600, "line": 115200}
RDTECH_MODELS = {0x0963: "UM24C", 0x09C9: "UM25C", 0x0D4C: "UM34C"}
RECORD_BYTES = 130
UNIT_WATTS = re.compile(r"(\d+(?:\.\d+)?)\s*(mW|W)\b")
KEYED_WATTS = re.compile(r"\bP(?:ower)?\s*[=:]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def rdtech_watts(record: bytes) -> float:
    model = int.from_bytes(record[:2], "big")
    if len(record) != RECORD_BYTES or model not in RDTECH_MODELS:
        raise ValueError(f"not an RDTech UM record ({len(record)} bytes, model 0x{model:04x})")
    return int.from_bytes(record[6:10], "big") / 1e3


def line_watts(line: str) -> float | None:
    """The watts a meter's line states, or None for a line without one (a header, volts only)."""
    match = UNIT_WATTS.search(line)
    if match:
        return float(match[1]) / (1e3 if match[2] == "mW" else 1.0)
    match = KEYED_WATTS.search(line)
    return float(match[1]) if match else None


def _pyserial() -> Callable:
    try:
        import serial
    except ImportError as err:
        raise PowerUnavailable("usb-meter needs pyserial: pip install pyserial==3.5") from err
    return lambda port, baudrate, timeout: serial.Serial(port, baudrate=baudrate, timeout=timeout)


class UsbMeterSampler:
    name = "usb-meter"

    def __init__(self, port: str | None = None, protocol: str = "rdtech", serial_factory: Callable | None = None,
                 timeout_s: float = 1.0):
        if protocol not in BAUD:
            raise ValueError(f"unknown usb-meter protocol '{protocol}': use one of {', '.join(BAUD)}")
        self.port = port or os.environ.get("EDGE_ASR_USB_METER")
        self.protocol, self.serial_factory, self.timeout_s = protocol, serial_factory, timeout_s
        self.describes = f"external USB power meter on {self.port} (all that flows through the meter)"
        self._serial = None
        self._pending = b""

    @classmethod
    def from_option(cls, option: str | None) -> UsbMeterSampler:
        """From `PORT` or `PORT:PROTOCOL`, the part of `usb-meter:...` after the name."""
        port, separator, protocol = (option or "").rpartition(":")
        return cls(port, protocol) if separator and "/" not in protocol else cls(option)

    def open(self) -> None:
        if not self.port:
            raise PowerUnavailable("no meter port: pass --power usb-meter:/dev/ttyUSB0 or set EDGE_ASR_USB_METER")
        factory = self.serial_factory or _pyserial()
        try:
            self._serial = factory(self.port, BAUD[self.protocol], self.timeout_s)
        except OSError as err:  # pyserial's SerialException is an OSError
            raise PowerUnavailable(f"cannot open {self.port}: {err}") from err
        if self.protocol != "line":
            try:
                self.read()
            except ValueError as err:
                self.close()
                raise PowerUnavailable(f"no RDTech UM meter answers on {self.port}: {err}") from err

    def read(self) -> float | None:
        if self.protocol == "line":
            return self._mean_of_new_lines()
        self._serial.write(b"\xf0")
        return rdtech_watts(self._serial.read(RECORD_BYTES))

    def _mean_of_new_lines(self) -> float | None:
        """The mean of the watts in the lines completed since the last read: the meter streams on its own."""
        self._pending += self._serial.read(self._serial.in_waiting)
        *lines, self._pending = self._pending.split(b"\n")
        watts = [w for line in lines if (w := line_watts(line.decode(errors="replace"))) is not None]
        return sum(watts) / len(watts) if watts else None

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close()
            self._serial = None
