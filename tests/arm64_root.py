"""An arm64 Debian root in which the aarch64 bundles' tests run edge-asr under qemu-user emulation.

    python3 tests/arm64_root.py [ROOT]     # debootstrap's packages unpacked (~2 min), then the runtime's wheels

The root holds Debian's python3 and, in ROOT/opt/edge-asr, the aarch64 wheels of the runtime's
dependencies, installed by the host's pip (``--platform``) rather than by pip under emulation. edge-asr's
runtime is copied in per test run, from the working tree. Nothing runs as a chroot: qemu-aarch64-static
-L ROOT finds the root's loader and libraries, and needs no privileges or binfmt registration.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_ROOT = Path.home() / ".cache" / "edge-asr" / "arm64-root"
SITE = "opt/edge-asr"  # inside the root
QEMU = "qemu-aarch64-static"
# The runtime's dependencies for a TVM bundle (onnxruntime is left out: the TVM engine does not need it).
PACKAGES = ["numpy==2.4.6", "soundfile==0.14.0", "soxr==1.1.0", "tokenizers==0.23.3", "threadpoolctl==3.8.0",
            "apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1"]


def root_path() -> Path:
    return Path(os.environ.get("EDGE_ASR_ARM64_ROOT", DEFAULT_ROOT))


def missing_tools(root: Path) -> str | None:
    """Why the emulated tests cannot run here, or None."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (apt install qemu-user-static)"
    if not (root / "usr/bin/python3").is_file():
        return f"no arm64 root at {root} (make one: python3 tests/arm64_root.py)"
    missing = [package for package in PACKAGES if not _installed(root, package)]
    if missing:
        return f"the arm64 root at {root} lacks {', '.join(missing)} (update it: python3 tests/arm64_root.py)"
    return None


def _installed(root: Path, package: str) -> bool:
    """Whether ``package`` (name==version) is in the root's site, by its dist-info folder."""
    name, version = package.split("==")
    return (root / SITE / f"{name.replace('-', '_')}-{version}.dist-info").is_dir()


def make_root(root: Path) -> None:
    if not (root / "usr/bin/python3").is_file():
        # --foreign only downloads and unpacks: its second stage would run arm64 dpkg in a chroot, which needs
        # a binfmt_misc registration that CI machines lack. Running python3 under qemu-user needs the files
        # only, so every downloaded package is unpacked here instead.
        subprocess.run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
                        "--include=python3,libgomp1", "bookworm", str(root), "http://deb.debian.org/debian"],
                       check=True)
        for deb in sorted((root / "var/cache/apt/archives").glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        if not (root / "usr/bin/python3").exists():
            sys.exit(f"debootstrap left no usr/bin/python3 in {root}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-warn-conflicts", "--upgrade",
                    "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
                    "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                    "--target", str(root / SITE), *PACKAGES], check=True)


def install_runtime(repo: Path, into: Path) -> Path:
    """edge_asr.runtime from the working tree into ``into``: all a board needs to run a bundle."""
    shutil.copytree(repo / "runtime", into / "edge_asr" / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
    return into


def run_python(root: Path, paths: list[Path], args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """The root's python3 under emulation, with the root's packages and ``paths`` importable."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "QEMU_LD_PREFIX": str(root),
           "PYTHONPATH": os.pathsep.join(str(p) for p in [*paths, root / SITE])}
    return subprocess.run([QEMU, str(root / "usr/bin/python3"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


if __name__ == "__main__":
    make_root(Path(sys.argv[1]) if len(sys.argv) > 1 else root_path())
