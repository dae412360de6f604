"""`edge-asr serve`: its options, checked before any model is compiled or loaded, then the stream
scheduler and the WebSocket server over it until SIGINT or SIGTERM.

This module is imported with the CLI, so websockets and prometheus-client are imported only when
the server starts: the other commands do not need them.
"""
from __future__ import annotations

import argparse
import errno
import importlib.util
import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_asr.runtime.cli_args import decoding_options
from edge_asr.runtime.errors import EdgeAsrError, require
from edge_asr.runtime.serving.scheduler import SchedulerOptions, build_scheduler

USAGE_EXIT = 2  # as argparse's: options that cannot work, refused before anything loads
TOKEN_VARIABLE = "EDGE_ASR_TOKEN"
SERVE_MODULES = ("websockets", "prometheus_client")


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port
    max_message_bytes: int = 2**20  # 32 s of audio a message
    idle_timeout_s: float = 30.0
    token: str | None = None
    insecure: bool = False  # another host than loopback without a token
    # A stream's queue full this long: the engine cannot keep up with this client, who is dropped.
    backpressure_timeout_s: float = 10.0

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: it may resolve to any address
            return False

    def validate(self) -> "ServeOptions":
        require(0 <= self.port <= 65535, f"the port must be between 0 and 65535, not {self.port}.")
        require(self.max_message_bytes >= 2, f"max_message_bytes must be 2 or more, not {self.max_message_bytes}.")
        require(self.idle_timeout_s > 0, f"the idle timeout must be positive, not {self.idle_timeout_s}.")
        require(self.backpressure_timeout_s > 0,
                f"backpressure_timeout_s must be positive, not {self.backpressure_timeout_s}.")
        require(self.loopback or self.token is not None or self.insecure,
                f"listening on {self.host} opens the server to other machines: give --token (or {TOKEN_VARIABLE}), "
                "or --insecure to serve without one.")
        return self


def add_serve_parser(commands, add_model_arguments: Callable, add_stream_options: Callable) -> None:
    defaults = ServeOptions()
    sv = commands.add_parser(
        "serve", help="live transcription for many clients over WebSocket",
        description="Serve live transcription over WebSocket: each client streams 16-bit 16 kHz mono PCM and "
        "gets the partial and final events of `edge-asr stream --format jsonl` (the protocol is in the README). "
        "Prometheus metrics at /metrics, a health check at /healthz, on the same port. SIGINT or SIGTERM "
        "stops the server once the finals already due are sent.")
    sv.add_argument("--host", default=defaults.host,
                    help="address to listen on; one other than loopback needs --token or --insecure "
                    "(default: %(default)s)")
    sv.add_argument("--port", type=int, default=defaults.port, metavar="N",
                    help="TCP port; 0 picks a free one, printed at start (default: %(default)s)")
    sv.add_argument("--token", help=f"clients must send `Authorization: Bearer TOKEN` (or ?token=TOKEN); "
                    f"default: ${TOKEN_VARIABLE}, which, unlike the option, does not show in `ps`")
    sv.add_argument("--insecure", action="store_true", help="listen beyond loopback without a token")
    sv.add_argument("--max-streams", type=int, default=SchedulerOptions().max_streams, metavar="N",
                    help="streams served at once; more clients are refused (default: %(default)s)")
    sv.add_argument("--max-message-bytes", type=int, default=defaults.max_message_bytes, metavar="N",
                    help="largest client message; a larger one closes the connection (default: %(default)s)")
    sv.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout_s, metavar="S",
                    help="a client silent this long is closed (default: %(default)s)")
    sv.add_argument("--workers", type=int, default=SchedulerOptions().workers, metavar="N",
                    help="1: one utterance at a time; N: up to N streams' turns at once in one engine loop, "
                    "their encoder windows and decoder steps batched into shared engine calls (README: Serve) "
                    "(default: %(default)s)")
    add_model_arguments(sv)
    add_stream_options(sv)


def serve_options(args) -> ServeOptions:
    return ServeOptions(host=args.host, port=args.port, max_message_bytes=args.max_message_bytes,
                        idle_timeout_s=args.idle_timeout, token=args.token or os.environ.get(TOKEN_VARIABLE) or None,
                        insecure=args.insecure)


def check_address(host: str, port: int) -> None:
    """Refuse, before the model loads, an address the server could not listen on: a host that does not
    resolve, an address of another machine, a port in use."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise EdgeAsrError(f"cannot listen on {host}: the name does not resolve ({err.strerror}).") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind(address)
        except OSError as err:
            reason = ("another program listens there" if err.errno == errno.EADDRINUSE
                      else "it is not an address of this machine" if err.errno == errno.EADDRNOTAVAIL
                      else err.strerror)
            raise EdgeAsrError(f"cannot listen on {host} port {port}: {reason}.") from None


def serve(args: argparse.Namespace, find_bundle: Callable[[], Path]) -> int:
    """find_bundle() gives the bundle (compiling it on first use), once the options are known to be good."""
    from edge_asr.runtime.streaming.stream_command import stream_options

    try:
        options = serve_options(args).validate()
        # Several workers put several streams' turns into one engine loop, which batches their encoder
        # windows and decoder steps; one serves one utterance at a time, on the engine itself.
        scheduling = SchedulerOptions(max_streams=args.max_streams,
                                      workers=min(args.workers, args.max_streams)).validate()
        streaming = stream_options(args).validate()
        check_address(options.host, options.port)
    except EdgeAsrError as err:
        print(f"edge-asr: {err}", file=sys.stderr)
        return USAGE_EXIT
    missing = [m for m in SERVE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise EdgeAsrError(f"edge-asr serve needs {', '.join(missing)}: pip install 'edge-asr[serve]'.")
    from edge_asr.runtime.serving.server import run

    decoding = decoding_options(args, word_timestamps=args.word_timestamps)
    scheduler = build_scheduler(find_bundle(), decoding, scheduling, streaming, args.threads, args.vad_model)
    return run(scheduler, options)
