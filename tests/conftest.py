"""Session-wide test rules: no network, few threads.

- A socket audit hook fails any connect/resolve to something other than loopback, so an accidental
  download (a hub model, a pip fetch) fails loudly instead of hanging or silently succeeding.
- Thread pools are pinned to one thread. torch is not imported here (engine tests never need it):
  the OMP/MKL variables take effect when a test imports torch, and ``torch.set_num_threads(1)`` is
  applied before each test once torch has been imported by anything.
"""
from __future__ import annotations

import os
import socket
import sys

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

_LOOPBACK = {"127.0.0.1", "::1", "localhost", "0.0.0.0", ""}


def _host(addr):
    return addr[0] if isinstance(addr, tuple) else addr


def _audit(event: str, args: tuple) -> None:
    if event == "socket.connect":
        sock, addr = args[0], args[1]
        if getattr(sock, "family", None) == getattr(socket, "AF_UNIX", object()):
            return
        host = _host(addr)
        if isinstance(host, str) and host not in _LOOPBACK and not host.startswith("127."):
            raise RuntimeError(f"network access attempted in a test: connect to {addr!r}")
    elif event == "socket.getaddrinfo":
        host = args[0]
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        if host is not None and host not in _LOOPBACK and not str(host).startswith("127."):
            raise RuntimeError(f"network access attempted in a test: resolve {host!r}")


if not getattr(sys, "_loom_network_audit", False):
    sys.addaudithook(_audit)
    sys._loom_network_audit = True

_pinned = False


def pytest_runtest_setup(item):
    global _pinned
    if not _pinned and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
        _pinned = True
