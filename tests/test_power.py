"""Power samplers against recorded fixtures: fake sysfs trees, canned tool output, fake serial ports and NVML."""
from __future__ import annotations

import itertools
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_asr.benchmarks.power import PowerRecording, choose
from edge_asr.benchmarks.power import rapl as rapl_module
from edge_asr.benchmarks.power.hwmon_ina3221 import Ina3221Sampler
from edge_asr.benchmarks.power.nvml import NvmlSampler
from edge_asr.runtime.gpu_memory import gpu_memory_used_mb
from edge_asr.benchmarks.power.rapl import RaplSampler
from edge_asr.benchmarks.power.rpi_pmic import RpiPmicSampler, parse_pmic
from edge_asr.benchmarks.power.sampler import PowerMonitor, PowerUnavailable, unavailable
from edge_asr.benchmarks.power.tegrastats import TegrastatsSampler, parse_rails
from edge_asr.benchmarks.power.usb_meter import UsbMeterSampler, line_watts

PI4_SENTENCE = ("Raspberry Pi 4 has no power sensor: attach a USB power meter and pass "
                "--power usb-meter:/dev/ttyUSB0")


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


def assert_unavailable(summary, *words: str) -> None:
    """Unavailable means no figures at all: a 0.0 would read as a measurement."""
    assert summary.available is False
    assert summary.mean_w is None and summary.peak_w is None and summary.joules is None
    assert summary.samples == 0
    assert all(word in summary.reason for word in words), summary.reason


def open_unavailable(sampler, *words: str) -> None:
    with pytest.raises(PowerUnavailable) as caught:
        sampler.open()
    assert all(word in str(caught.value) for word in words), str(caught.value)


def python_printing(script: str) -> list[str]:
    """A command that stands in for a board tool: this Python running `script`."""
    return [sys.executable, "-c", script]


# --- INA3221 ------------------------------------------------------------------------------------------------

ORIN_NANO_HWMON = {  # JetPack 6: one chip; in4-6 are shunt voltages (uV), in7/curr4 the summation channel
    "sys/class/hwmon/hwmon0/name": "cpu_thermal",
    "sys/class/hwmon/hwmon0/temp1_input": "48500",
    "sys/class/hwmon/hwmon1/name": "ina3221",
    "sys/class/hwmon/hwmon1/in1_label": "VDD_IN",
    "sys/class/hwmon/hwmon1/in1_input": "5000",
    "sys/class/hwmon/hwmon1/curr1_input": "1000",
    "sys/class/hwmon/hwmon1/in2_label": "VDD_CPU_GPU_CV",
    "sys/class/hwmon/hwmon1/in2_input": "5000",
    "sys/class/hwmon/hwmon1/curr2_input": "300",
    "sys/class/hwmon/hwmon1/in3_label": "VDD_SOC",
    "sys/class/hwmon/hwmon1/in3_input": "5000",
    "sys/class/hwmon/hwmon1/curr3_input": "250",
    "sys/class/hwmon/hwmon1/in4_input": "2000",
    "sys/class/hwmon/hwmon1/in7_label": "sum of shunt voltages",
    "sys/class/hwmon/hwmon1/in7_input": "3100",
    "sys/class/hwmon/hwmon1/curr4_input": "1550",
}
AGX_ORIN_HWMON = {  # two chips, no input rail; the second labels its unused channels NC
    "sys/class/hwmon/hwmon2/name": "ina3221",
    "sys/class/hwmon/hwmon2/in1_label": "VDD_GPU_SOC",
    "sys/class/hwmon/hwmon2/in1_input": "20000",
    "sys/class/hwmon/hwmon2/curr1_input": "120",
    "sys/class/hwmon/hwmon2/in2_label": "VDD_CPU_CV",
    "sys/class/hwmon/hwmon2/in2_input": "20000",
    "sys/class/hwmon/hwmon2/curr2_input": "20",
    "sys/class/hwmon/hwmon2/in3_label": "VIN_SYS_5V0",
    "sys/class/hwmon/hwmon2/in3_input": "5000",
    "sys/class/hwmon/hwmon2/curr3_input": "600",
    "sys/class/hwmon/hwmon3/name": "ina3221",
    "sys/class/hwmon/hwmon3/in1_label": "NC",
    "sys/class/hwmon/hwmon3/in1_input": "0",
    "sys/class/hwmon/hwmon3/curr1_input": "0",
    "sys/class/hwmon/hwmon3/in2_label": "VDDQ_VDD2_1V8AO",
    "sys/class/hwmon/hwmon3/in2_input": "5000",
    "sys/class/hwmon/hwmon3/curr2_input": "100",
}
NANO_IIO = {  # JetPack 4 Jetson Nano: rails in mW, numbered from 0
    "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/rail_name_0": "POM_5V_IN",
    "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/in_power0_input": "3000",
    "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/rail_name_1": "POM_5V_GPU",
    "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/in_power1_input": "0",
    "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/rail_name_2": "POM_5V_CPU",
    "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/in_power2_input": "500",
}


def test_ina3221_hwmon_reads_the_input_rail(tmp_path):
    sampler = Ina3221Sampler(str(write_tree(tmp_path, ORIN_NANO_HWMON)))
    sampler.open()
    assert sampler.read() == pytest.approx(5.0)  # VDD_IN 5000 mV x 1000 mA
    assert sampler.rails() == pytest.approx({"VDD_IN": 5.0, "VDD_CPU_GPU_CV": 1.5, "VDD_SOC": 1.25})
    assert sampler.describes == "whole board input VDD_IN (INA3221)"
    (tmp_path / "sys/class/hwmon/hwmon1/curr1_input").write_text("1500\n")
    assert sampler.read() == pytest.approx(7.5)
    sampler.close()


def test_ina3221_without_an_input_rail_sums_both_chips_and_says_so(tmp_path):
    sampler = Ina3221Sampler(str(write_tree(tmp_path, AGX_ORIN_HWMON)))
    sampler.open()
    assert sampler.read() == pytest.approx(2.4 + 0.4 + 3.0 + 0.5)
    assert set(sampler.rails()) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}
    assert sampler.describes.startswith("sum of rails") and "excludes the carrier board" in sampler.describes


def test_ina3221_iio_layout_of_jetpack_4(tmp_path):
    sampler = Ina3221Sampler(str(write_tree(tmp_path, NANO_IIO)))
    sampler.open()
    assert sampler.read() == pytest.approx(3.0)
    assert sampler.rails() == pytest.approx({"POM_5V_IN": 3.0, "POM_5V_GPU": 0.0, "POM_5V_CPU": 0.5})
    assert sampler.describes == "whole board input POM_5V_IN (INA3221)"


def test_ina3221_absent(tmp_path):
    open_unavailable(Ina3221Sampler(str(tmp_path)), "no INA3221")


# --- tegrastats ---------------------------------------------------------------------------------------------

ORIN_NANO_LINES = [  # JetPack 6
    "04-27-2026 15:00:54 RAM 779/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [3%@1344,1%@1344,0%@1344,2%@1344,0%@1344,0%@1344] EMC_FREQ 0%@2133 GR3D_FREQ 0% cpu@50.125C "
    "soc2@49.125C soc0@49.25C gpu@50.562C tj@50.562C soc1@50.437C "
    "VDD_IN 5123mW/5000mW VDD_CPU_GPU_CV 1228mW/1230mW VDD_SOC 1580mW/1575mW",
    "04-27-2026 15:00:55 RAM 781/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [45%@1728,30%@1728,42%@1728,28%@1728,46%@1113,39%@1113] EMC_FREQ 12%@2133 GR3D_FREQ 55% cpu@51.0C "
    "soc2@49.5C soc0@49.6C gpu@51.2C tj@51.2C soc1@50.5C "
    "VDD_IN 7012mW/6020mW VDD_CPU_GPU_CV 2913mW/2070mW VDD_SOC 1957mW/1766mW",
]
AGX_ORIN_LINE = (  # JetPack 5: no input rail
    "RAM 4722/30536MB (lfb 6121x4MB) SWAP 0/15268MB (cached 0MB) CPU [1%@729,0%@729,0%@729,0%@729,off,off,off,off] "
    "EMC_FREQ 0%@2133 GR3D_FREQ 0%@[0,0] VIC_FREQ 729 APE 174 CV0@-256C CPU@46.5C Tboard@35C SOC2@43.031C "
    "Tdiode@37.25C SOC0@43.5C CV1@-256C GPU@-256C tj@46.5C SOC1@42.437C CV2@-256C "
    "VDD_GPU_SOC 2400mW/2400mW VDD_CPU_CV 400mW/400mW VIN_SYS_5V0 3000mW/3000mW NC 0mW/0mW "
    "VDDQ_VDD2_1V8AO 500mW/500mW NC 0mW/0mW"
)
NANO_JP4_LINES = [  # JetPack 4: no unit on the rails
    "RAM 1276/3956MB (lfb 108x4MB) SWAP 0/1978MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [31%@1479,12%@1479,8%@1479,9%@1479] EMC_FREQ 3%@1600 GR3D_FREQ 0%@76 APE 25 PLL@39C CPU@40.5C "
    "PMIC@100C GPU@41C AO@46C thermal@41C POM_5V_IN 3000/2900 POM_5V_GPU 0/0 POM_5V_CPU 500/480",
    "RAM 1280/3956MB (lfb 108x4MB) SWAP 0/1978MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [88%@1479,90%@1479,85%@1479,91%@1479] EMC_FREQ 20%@1600 GR3D_FREQ 0%@76 APE 25 PLL@41C CPU@43C "
    "PMIC@100C GPU@42C AO@47.5C thermal@42.25C POM_5V_IN 4721/3650 POM_5V_GPU 40/20 POM_5V_CPU 1922/1100",
]
XAVIER_NX_JP4_LINE = (
    "RAM 2673/7765MB (lfb 118x4MB) SWAP 0/3883MB (cached 0MB) CPU [12%@1190,8%@1190,4%@1190,off,off,off] "
    "EMC_FREQ 7% GR3D_FREQ 33% AO@35C GPU@33C PMIC@100C AUX@33.5C CPU@35C thermal@33.9C "
    "VDD_IN 3902/3611 VDD_CPU_GPU_CV 1331/1180 VDD_SOC 997/941"
)


@pytest.mark.parametrize("line, rails", [
    (ORIN_NANO_LINES[0], {"VDD_IN": 5.123, "VDD_CPU_GPU_CV": 1.228, "VDD_SOC": 1.58}),
    (AGX_ORIN_LINE, {"VDD_GPU_SOC": 2.4, "VDD_CPU_CV": 0.4, "VIN_SYS_5V0": 3.0, "VDDQ_VDD2_1V8AO": 0.5}),
    (NANO_JP4_LINES[1], {"POM_5V_IN": 4.721, "POM_5V_GPU": 0.04, "POM_5V_CPU": 1.922}),
    (XAVIER_NX_JP4_LINE, {"VDD_IN": 3.902, "VDD_CPU_GPU_CV": 1.331, "VDD_SOC": 0.997}),
])
def test_tegrastats_lines_give_only_the_rails(line, rails):
    assert parse_rails(line) == pytest.approx(rails)  # not RAM, SWAP, IRAM, frequencies or temperatures


def tegrastats_stand_in(lines: list[str], pause_s: float = 0.2) -> list[str]:
    """Prints the first line, then the others after a pause, then idles until close() stops it."""
    return python_printing(f"import sys, time\nlines = {lines!r}\nprint(lines[0], flush=True)\n"
                           f"for line in lines[1:]:\n    time.sleep({pause_s})\n    print(line, flush=True)\n"
                           "time.sleep(30)\n")


def test_tegrastats_returns_each_new_line_once():
    sampler = TegrastatsSampler(command=tegrastats_stand_in(ORIN_NANO_LINES))
    sampler.open()
    try:
        assert sampler.describes == "whole board input VDD_IN (tegrastats)"
        assert sampler.read() == pytest.approx(5.123)
        deadline, second = time.monotonic() + 3, None
        while second is None and time.monotonic() < deadline:
            time.sleep(0.02)
            second = sampler.read()
        assert second == pytest.approx(7.012)
        assert sampler.read() is None  # nothing new since
        assert sampler.rails()["VDD_SOC"] == pytest.approx(1.957)
    finally:
        sampler.close()


def test_tegrastats_jetpack_4_and_a_module_without_input_rail():
    sampler = TegrastatsSampler(command=tegrastats_stand_in(NANO_JP4_LINES[:1]))
    sampler.open()
    assert sampler.describes == "whole board input POM_5V_IN (tegrastats)"
    assert sampler.read() == pytest.approx(3.0)
    sampler.close()
    sampler = TegrastatsSampler(command=tegrastats_stand_in([AGX_ORIN_LINE]))
    sampler.open()
    assert sampler.read() == pytest.approx(6.3)
    assert sampler.describes.startswith("sum of rails VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0+VDDQ_VDD2_1V8AO")
    sampler.close()


def test_tegrastats_unavailable():
    open_unavailable(TegrastatsSampler(command=["no-such-tegrastats"]), "not on PATH")
    open_unavailable(TegrastatsSampler(command=python_printing("print('RAM 779/7620MB CPU [3%@1344]')")),
                     "no power rails")


# --- Raspberry Pi 5 PMIC ------------------------------------------------------------------------------------

PI5_PMIC = """\
 3V7_WL_SW_A current(0)=0.05000000A
   3V3_SYS_A current(1)=0.10000000A
   1V8_SYS_A current(2)=0.20000000A
  DDR_VDD2_A current(3)=0.10000000A
  DDR_VDDQ_A current(4)=0.00000000A
   1V1_SYS_A current(5)=0.20000000A
    0V8_SW_A current(6)=0.40000000A
  VDD_CORE_A current(7)=2.00000000A
   3V3_DAC_A current(17)=0.00010000A
   3V3_ADC_A current(18)=0.00050000A
   0V8_AON_A current(16)=0.00500000A
      HDMI_A current(22)=0.02000000A
 3V7_WL_SW_V volt(8)=3.70000000V
   3V3_SYS_V volt(9)=3.30000000V
   1V8_SYS_V volt(10)=1.80000000V
  DDR_VDD2_V volt(11)=1.10000000V
  DDR_VDDQ_V volt(12)=0.60000000V
   1V1_SYS_V volt(13)=1.10000000V
    0V8_SW_V volt(14)=0.80000000V
  VDD_CORE_V volt(15)=0.80000000V
   3V3_DAC_V volt(20)=3.30000000V
   3V3_ADC_V volt(21)=3.30000000V
   0V8_AON_V volt(19)=0.80000000V
      HDMI_V volt(23)=5.00000000V
     EXT5V_V volt(24)=5.10000000V
      BATT_V volt(25)=0.00000000V
"""
# By hand, A x V per rail: 0.185 + 0.33 + 0.36 + 0.11 + 0 + 0.22 + 0.32 + 1.6 + 0.00033 + 0.00165 + 0.004 + 0.1
PI5_WATTS = 3.23098


def test_rpi_pmic_sums_the_rails_with_current_and_voltage():
    rails = parse_pmic(PI5_PMIC)
    assert len(rails) == 12 and "EXT5V" not in rails and "BATT" not in rails
    assert rails["VDD_CORE"] == pytest.approx(1.6)
    sampler = RpiPmicSampler(python_printing(f"print({PI5_PMIC!r})"))
    sampler.open()
    assert sampler.read() == pytest.approx(PI5_WATTS)
    assert "not the 5 V input" in sampler.describes and "USB peripherals" in sampler.describes
    sampler.close()


def test_rpi_pmic_unavailable_without_vcgencmd_or_on_a_pi_4():
    open_unavailable(RpiPmicSampler(["no-such-vcgencmd", "pmic_read_adc"]), "not on PATH")
    pi4 = python_printing("print('error=1 error_msg=\"Command not registered\"')")
    open_unavailable(RpiPmicSampler(pi4), "no rail currents", "Command not registered", "usb-meter:/dev/ttyUSB0")


# --- USB meter ----------------------------------------------------------------------------------------------


def um_record(model: int, volts_raw: int, amps_raw: int, milliwatts: int) -> bytes:
    head = (model.to_bytes(2, "big") + volts_raw.to_bytes(2, "big") + amps_raw.to_bytes(2, "big")
            + milliwatts.to_bytes(4, "big") + (25).to_bytes(2, "big") + (77).to_bytes(2, "big"))
    return head + bytes(130 - len(head))


class FakeRecordPort:
    """Answers each 0xF0 with the next canned record, as a UM meter does."""

    def __init__(self, *records: bytes):
        self.records, self.asked, self.closed = list(records), 0, False

    def write(self, data: bytes) -> None:
        assert data == b"\xf0"
        self.asked += 1

    def read(self, size: int) -> bytes:
        return self.records.pop(0)[:size]

    def close(self) -> None:
        self.closed = True


class FakeLinePort:
    """A meter that streams text: each read returns the next chunk that arrived."""

    def __init__(self, *chunks: bytes):
        self.chunks = list(chunks)

    @property
    def in_waiting(self) -> int:
        return len(self.chunks[0]) if self.chunks else 0

    def read(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks and size else b""

    def close(self) -> None:
        pass


def test_um25c_record():
    # UM25C: 5.123 V (mV) x 0.9760 A (0.1 mA) = 5.000 W, which bytes 6-9 state in mW
    port = FakeRecordPort(um_record(0x09C9, 5123, 9760, 5000), um_record(0x09C9, 5101, 19600, 9998))
    opened = []
    sampler = UsbMeterSampler("/dev/rfcomm0", "um25c", serial_factory=lambda *args: opened.append(args) or port)
    sampler.open()
    assert opened == [("/dev/rfcomm0", 9600, 1.0)]
    assert sampler.read() == pytest.approx(9.998)  # open() took the first record to check the meter
    sampler.close()
    assert port.closed and port.asked == 2


def test_um24c_record_and_a_port_that_is_no_meter():
    record = um_record(0x0963, 512, 980, 5017)  # UM24C: 5.12 V (10 mV) x 0.980 A (mA)
    sampler = UsbMeterSampler("/dev/ttyUSB0", serial_factory=lambda *a: FakeRecordPort(record, record))
    sampler.open()
    assert sampler.read() == pytest.approx(5.017)
    silent = UsbMeterSampler("/dev/ttyUSB0", serial_factory=lambda *a: FakeRecordPort(b""))
    open_unavailable(silent, "no RDTech UM meter answers on /dev/ttyUSB0")


def test_line_meter_means_the_lines_since_the_last_read():
    port = FakeLinePort(b"V=5.02V I=0.99A P=4.97W\r\nmeter ready\n5.03W\n", b"P=5.5", b"0\n", b"5120mW\n")
    sampler = UsbMeterSampler("/dev/ttyACM0", "line", serial_factory=lambda *a: port)
    sampler.open()
    assert sampler.read() == pytest.approx(5.0)
    assert sampler.read() is None  # half a line
    assert sampler.read() == pytest.approx(5.5)
    assert sampler.read() == pytest.approx(5.12)
    assert sampler.read() is None


@pytest.mark.parametrize("line, watts", [("5.12W", 5.12), ("P=5.12", 5.12), ("power: 4.2", 4.2),
                                         ("5120 mW", 5.12), ("12.5Wh 5.01V", None), ("V=5.01V", None)])
def test_line_watts(line, watts):
    assert line_watts(line) == (pytest.approx(watts) if watts is not None else None)


def test_usb_meter_option_and_unavailable(monkeypatch):
    meter = UsbMeterSampler.from_option("/dev/rfcomm0:um25c")
    assert (meter.port, meter.protocol) == ("/dev/rfcomm0", "um25c")
    assert UsbMeterSampler.from_option("/dev/ttyUSB0").protocol == "rdtech"
    with pytest.raises(ValueError, match="line"):
        UsbMeterSampler.from_option("/dev/ttyUSB0:um99")
    monkeypatch.delenv("EDGE_ASR_USB_METER", raising=False)
    open_unavailable(UsbMeterSampler(), "EDGE_ASR_USB_METER")

    def no_port(port, baudrate, timeout):
        raise OSError(2, "No such file or directory")

    open_unavailable(UsbMeterSampler("/dev/ttyUSB9", serial_factory=no_port), "cannot open /dev/ttyUSB9")
    monkeypatch.setitem(sys.modules, "serial", None)  # as if pyserial were not installed
    open_unavailable(UsbMeterSampler("/dev/ttyUSB0"), "pip install pyserial==3.5")


# --- RAPL ---------------------------------------------------------------------------------------------------

RANGE_UJ = 262143328850


def rapl_tree(root: Path, package_uj: int) -> Path:
    return write_tree(root, {
        "sys/class/powercap/intel-rapl/enabled": "1",
        "sys/class/powercap/intel-rapl:0/name": "package-0",
        "sys/class/powercap/intel-rapl:0/energy_uj": str(package_uj),
        "sys/class/powercap/intel-rapl:0/max_energy_range_uj": str(RANGE_UJ),
        "sys/class/powercap/intel-rapl:0:0/name": "core",  # part of the package: not added again
        "sys/class/powercap/intel-rapl:0:0/energy_uj": "999000000",
        "sys/class/powercap/intel-rapl:0:0/max_energy_range_uj": str(RANGE_UJ),
        "sys/class/powercap/intel-rapl:1/name": "psys",  # contains the package: not added either
        "sys/class/powercap/intel-rapl:1/energy_uj": "888000000",
        "sys/class/powercap/intel-rapl:1/max_energy_range_uj": str(RANGE_UJ),
    })


def test_rapl_mean_watts_between_reads_across_a_wrap(tmp_path):
    energy = tmp_path / "sys/class/powercap/intel-rapl:0/energy_uj"
    sampler = RaplSampler(str(rapl_tree(tmp_path, RANGE_UJ - 1_000_000)), clock=iter([10.0, 11.0, 11.5]).__next__)
    sampler.open()
    assert sampler.describes == "CPU package (RAPL)"
    assert sampler.read() is None  # the first read starts the count
    energy.write_text("2000000\n")  # wrapped: 1 J to the top of the range, 2 J after it
    assert sampler.read() == pytest.approx(3.0)
    energy.write_text("9500000\n")
    assert sampler.read() == pytest.approx(15.0)  # 7.5 J in 0.5 s


def test_rapl_absent_or_root_only(tmp_path, monkeypatch):
    open_unavailable(RaplSampler(str(tmp_path / "empty")), "no RAPL powercap interface")
    root = rapl_tree(tmp_path / "host", 1000)
    read_number = rapl_module._number

    def root_only(path: Path) -> int:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return read_number(path)

    monkeypatch.setattr(rapl_module, "_number", root_only)
    open_unavailable(RaplSampler(str(root)), "intel-rapl:0/energy_uj is readable by root only", "chmod a+r")


# --- NVML ---------------------------------------------------------------------------------------------------


class FakeNvmlError(Exception):
    pass


def fake_nvml(milliwatts: int = 75500, gpus: int = 1, driver: bool = True, processes=()) -> SimpleNamespace:
    calls = []

    def init():
        if not driver:
            raise FakeNvmlError("Driver Not Loaded")
        calls.append("init")

    return SimpleNamespace(
        NVMLError=FakeNvmlError, calls=calls, nvmlInit=init, nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: gpus, nvmlDeviceGetHandleByIndex=lambda i: f"handle-{i}",
        nvmlDeviceGetName=lambda handle: b"NVIDIA Jetson-free GPU",
        nvmlDeviceGetPowerUsage=lambda handle: milliwatts,
        nvmlDeviceGetComputeRunningProcesses=lambda handle: list(processes))


def test_nvml_power():
    nvml = fake_nvml()
    sampler = NvmlSampler(nvml_module=nvml)
    sampler.open()
    assert sampler.read() == pytest.approx(75.5)
    assert sampler.describes == "GPU 0 NVIDIA Jetson-free GPU board power (NVML)"
    sampler.close()
    assert nvml.calls == ["init", "shutdown"]


def test_nvml_unavailable(monkeypatch):
    open_unavailable(NvmlSampler(nvml_module=fake_nvml(driver=False)), "Driver Not Loaded")
    nvml = fake_nvml(gpus=1)
    open_unavailable(NvmlSampler(1, nvml_module=nvml), "there is no GPU 1")
    assert nvml.calls == ["init", "shutdown"]
    monkeypatch.setitem(sys.modules, "pynvml", None)
    open_unavailable(NvmlSampler(), "pip install nvidia-ml-py")
    assert gpu_memory_used_mb() is None


def test_gpu_memory_of_this_process():
    processes = [SimpleNamespace(pid=1, usedGpuMemory=2**30),
                 SimpleNamespace(pid=os.getpid(), usedGpuMemory=512 * 2**20)]
    assert gpu_memory_used_mb(nvml_module=fake_nvml(processes=processes)) == pytest.approx(512.0)
    assert gpu_memory_used_mb(pid=99999999, nvml_module=fake_nvml(processes=processes)) is None
    assert gpu_memory_used_mb(nvml_module=fake_nvml(driver=False)) is None


def test_nvml_on_a_real_gpu():
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception as err:  # no pynvml, or NVMLError with no driver
        pytest.skip(f"needs an NVIDIA GPU and driver: {err}")
    sampler = NvmlSampler()
    sampler.open()
    try:
        assert sampler.read() > 0
        assert "GPU 0" in sampler.describes
    finally:
        sampler.close()


# --- the monitor --------------------------------------------------------------------------------------------


class ScriptedSampler:
    name, describes = "scripted", "a script of readings"

    def __init__(self, *readings, fail: str | None = None, refuse: str | None = None):
        self.readings, self.fail, self.refuse, self.closed = list(readings), fail, refuse, False

    def open(self) -> None:
        if self.refuse:
            raise PowerUnavailable(self.refuse)

    def read(self) -> float | None:
        if self.readings:
            return self.readings.pop(0)
        if self.fail:
            raise OSError(self.fail)
        return None

    def close(self) -> None:
        self.closed = True


def run_until_read(monitor: PowerMonitor) -> PowerMonitor:
    with monitor:
        deadline = time.monotonic() + 2
        while monitor.sampler.readings and time.monotonic() < deadline:
            time.sleep(0.005)
    return monitor


def test_monitor_integrates_each_reading_over_its_interval():
    # the clock gives 0 at the start, then 1, 2, 3 as the readings arrive: each reading covers one second
    sampler = ScriptedSampler(2.0, 4.0, None, 6.0)
    summary = run_until_read(PowerMonitor(sampler, 0.001, clock=itertools.count(0.0, 1.0).__next__)).summary()
    assert summary.available and summary.reason is None
    assert (summary.samples, summary.seconds) == (3, 3.0)
    assert summary.joules == pytest.approx(12.0)
    assert summary.mean_w == pytest.approx(4.0) and summary.peak_w == 6.0
    assert summary.per_audio_second(6.0) == pytest.approx(2.0)
    assert summary.to_dict()["joules"] == pytest.approx(12.0)
    assert sampler.closed


def test_monitor_reports_unavailable_never_zero():
    refused = run_until_read(PowerMonitor(ScriptedSampler(refuse="RAPL is root only"))).summary()
    assert_unavailable(refused, "RAPL is root only")
    assert refused.per_audio_second(10.0) is None
    silent = ScriptedSampler()
    assert_unavailable(run_until_read(PowerMonitor(silent, 0.01)).summary(), "no reading in")
    assert silent.closed
    failing = ScriptedSampler(3.0, fail="I2C bus error")
    assert_unavailable(run_until_read(PowerMonitor(failing, 0.001)).summary(), "reading failed", "I2C bus error")
    assert failing.closed
    assert_unavailable(unavailable("rapl", "why"), "why")


def test_recording_summarises_every_sampler():
    samplers = [ScriptedSampler(5.0, 5.0), ScriptedSampler(refuse="no meter")]
    with PowerRecording(samplers, interval_s=0.001) as recording:
        time.sleep(0.05)
    working, refused = recording.summaries()
    assert working.available and working.mean_w == pytest.approx(5.0, rel=1e-3) and working.samples == 2
    assert_unavailable(refused, "no meter")


# --- choosing the sources -----------------------------------------------------------------------------------


@pytest.fixture
def bare_host(monkeypatch):
    """No tegrastats or vcgencmd on PATH and no meter configured, whatever this machine has."""
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    monkeypatch.delenv("EDGE_ASR_USB_METER", raising=False)


def test_auto_on_a_jetson_takes_the_ina3221(tmp_path, bare_host):
    samplers, missing = choose("auto", root=str(write_tree(tmp_path, ORIN_NANO_HWMON)))
    assert [s.name for s in samplers] == ["ina3221"] and missing == []


def test_auto_on_a_raspberry_pi(tmp_path, bare_host, monkeypatch):
    pi4 = write_tree(tmp_path / "pi4", {"proc/device-tree/model": "Raspberry Pi 4 Model B Rev 1.4\0"})
    samplers, missing = choose("auto", root=str(pi4))
    assert samplers == [] and len(missing) == 1
    assert_unavailable(missing[0], PI4_SENTENCE)
    assert missing[0].source == "auto"
    monkeypatch.setenv("EDGE_ASR_USB_METER", "/dev/ttyUSB0")
    samplers, missing = choose("auto", root=str(pi4))
    assert [(s.name, s.port) for s in samplers] == [("usb-meter", "/dev/ttyUSB0")] and missing == []
    pi5 = write_tree(tmp_path / "pi5", {"proc/device-tree/model": "Raspberry Pi 5 Model B Rev 1.0\0"})
    assert [s.name for s in choose("auto", root=str(pi5))[0]] == ["rpi-pmic"]


def test_auto_on_x86_and_on_nothing(tmp_path, bare_host):
    samplers, missing = choose("auto", cuda=True, root=str(rapl_tree(tmp_path / "x86", 1000)))
    assert [s.name for s in samplers] == ["rapl", "nvml"] and missing == []
    samplers, missing = choose("auto", root=str(tmp_path / "nothing"))
    assert samplers == []
    assert_unavailable(missing[0], "no power sensor found", "ina3221", "tegrastats", "rapl")


def test_named_sources():
    samplers, missing = choose("rapl, nvml:1,usb-meter:/dev/ttyUSB0:line")
    assert [s.name for s in samplers] == ["rapl", "nvml:1", "usb-meter"] and missing == []
    assert (samplers[1].index, samplers[2].port, samplers[2].protocol) == (1, "/dev/ttyUSB0", "line")
    assert choose("none") == ([], [])
    with pytest.raises(ValueError, match="ina3221, tegrastats, rpi-pmic, usb-meter, rapl, nvml"):
        choose("rapl,watts")
    with pytest.raises(ValueError, match="takes no ':' option"):
        choose("rapl:0")
