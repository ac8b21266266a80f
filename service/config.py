"""Server configuration: one dataclass, filled from ``loom serve`` flags or by tests.

Everything the server touches lives under a base directory unless a folder is given explicitly::

    base/models  base/input  base/output  base/temp  base/user  base/loom.sqlite3
"""
from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def is_loopback_host(host: str) -> bool:
    h = (host or "").strip().lower().strip("[]")
    if h in ("localhost", "") or h.endswith(".localhost"):
        return h != ""
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8188
    base_dir: Path = field(default_factory=lambda: Path.cwd())
    models_dir: Path | None = None
    input_dir: Path | None = None
    output_dir: Path | None = None
    temp_dir: Path | None = None
    user_dir: Path | None = None
    db_path: Path | None = None
    token: str | None = None  # required when host is not loopback
    allowed_origins: tuple[str, ...] = ()  # extra "scheme://host:port" origins allowed to change state
    max_upload_bytes: int = 100 * 1024 * 1024  # multipart uploads and userdata files
    max_json_bytes: int = 32 * 1024 * 1024  # JSON bodies (a 10k-node prompt is ~2 MB)
    max_image_pixels: int = 64 * 1024 * 1024  # decompression-bomb guard for uploads and /view previews
    history_max_items: int = 10_000
    history_max_age_s: float = 30 * 86400.0
    prune_outputs: bool = False  # pruning history never deletes output files unless this is set
    requeue_interrupted: bool = False  # on restart: re-queue a prompt that was running (default: mark failed)
    preview_interval_s: float = 0.1  # at most this often a preview image is encoded per prompt
    preview_size: int = 512
    preview_method: str = "none"  # live previews for prompts that do not ask (ComfyUI's --preview-method)
    frontend_root: Path | None = None  # default: comfyui_frontend_package's static dir, if installed
    device: str | None = None  # model device (--device); None: cuda if present, else cpu
    dtype: str | None = None  # model precision (--dtype): fp32 | bf16 | fp16 | unet=..,vae=..,clip=..
    replay_prompts: int = 32  # per-prompt event buffers kept in memory for /prompt/{id}/events
    replay_events: int = 200_000  # total events kept over all replay buffers (and per prompt)
    ws_queue_limit: int = 200_000  # messages buffered for one slow websocket before it is dropped
    head_timeout_s: float = 30.0  # a request head must arrive within this (slowloris)
    max_connections: int | None = None  # open connections at once; None: half the file limit, at most 1,000
    cache_bytes: int = 2 * 1024**3  # output-cache budget (`loom serve --cache-mb`)
    memory_budget_bytes: int | None = None  # what nodes may allocate per tensor (`--memory-mb`); None: RAM
    base_lock: Any = None  # service.store.BaseLock taken by `loom serve` before the app starts
    registry: Any = None  # engine.node.Registry; default nodes.default_registry()
    env: Any = None  # engine.context.Env; default built from the folders above
    version: str = "0.1.0"
    # worker pool on Ray (None: the in-process worker): 'local' | 'auto' | a cluster address
    ray: str | None = None
    workers: int = 1  # pool actors (one per GPU where the cluster has GPUs)
    ray_policy: str = "affinity"  # or 'round_robin' (the baseline, for comparison)
    ray_registry: str | None = None  # "module:function" building the actors' registry (default: Loom's nodes)
    ray_num_cpus: int | None = None  # CPUs of a 'local' Ray instance (default: all)
    worker_model_budget_bytes: int | None = None  # each actor's model-store budget (default: the store's)

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir)
        b = self.base_dir
        self.models_dir = Path(self.models_dir or b / "models")
        self.input_dir = Path(self.input_dir or b / "input")
        self.output_dir = Path(self.output_dir or b / "output")
        self.temp_dir = Path(self.temp_dir or b / "temp")
        self.user_dir = Path(self.user_dir or b / "user")
        self.db_path = Path(self.db_path or b / "loom.sqlite3")

    @property
    def loopback(self) -> bool:
        return is_loopback_host(self.host)

    def check(self) -> None:
        """Refuse unsafe setups: a non-loopback bind needs a token."""
        if not self.loopback and not self.token:
            raise SystemExit(f"refusing to listen on {self.host} without --token (or LOOM_TOKEN); "
                             "use --token generate to create one")
        if self.token == "generate":
            self.token = secrets.token_urlsafe(24)
        from modelstore.precision import parse_dtype

        try:
            parse_dtype(self.dtype)
        except ValueError as e:
            raise SystemExit(f"loom serve: {e}") from None

    def ensure_dirs(self) -> None:
        for d in (self.models_dir, self.input_dir, self.output_dir, self.temp_dir, self.user_dir,
                  self.db_path.parent):
            Path(d).mkdir(parents=True, exist_ok=True)

    def roots(self) -> dict[str, Path]:
        """The file types /view and /upload accept, to their roots."""
        return {"input": Path(self.input_dir), "output": Path(self.output_dir), "temp": Path(self.temp_dir)}

    def default_frontend_root(self) -> Path | None:
        if self.frontend_root:
            return Path(self.frontend_root)
        if os.environ.get("LOOM_NO_FRONTEND"):
            return None
        try:
            import comfyui_frontend_package as pkg  # optional extra: pip install loom[ui]
        except ImportError:
            return None
        p = Path(pkg.__file__).parent / "static"
        return p if (p / "index.html").is_file() else None
