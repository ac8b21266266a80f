"""The two extension points of the model store, as protocols: a ``KindLoader`` builds the values of some
``ModelKey.component`` names (a UNet, an upscale model, a TAESD decoder, a ControlNet ...); a ``Family`` plans and
builds the components of single-file checkpoints of one architecture family (SD1/2/XL, SD3, Flux ...).

Adding a kind or family = a new module in ``modelstore/kinds/`` with ``LOADERS = [...]`` and/or
``FAMILIES = [...]``, listed in ``modelstore/kinds/__init__.py``'s ``MODULES``. Nothing else changes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..refs import ModelKey
from ..sources import Source, Sources


@dataclass
class BuildContext:
    """What a loader gets to build one value: the store's sources (headers, tensor reads), device, options,
    the shared CLIP tokenizer cache, and ``pinned(key)`` (a context manager yielding another key's live value,
    pinned while the block runs: a patched copy is built from its pinned base)."""
    sources: Sources
    device: str
    channels_last: bool
    tokenizer: Callable[..., Any]
    pinned: Callable[[ModelKey], contextlib.AbstractContextManager]
    families: tuple = ()

    def torch_dtype(self, key: ModelKey):
        import torch

        return getattr(torch, key.dtype)


class KindLoader(Protocol):
    """Builds values for the ``components`` it names. ``socket`` is the ref kind it feeds ('UPSCALE_MODEL' ...),
    ``folder`` the model folder its files live in (None for checkpoint components)."""
    components: tuple[str, ...]
    socket: str
    folder: str | None

    def describe(self, src: Source, ctx: BuildContext) -> tuple:
        """Cheap (header-only) facts as (name, value) pairs for the ref's ``info``; raise to refuse the file early."""

    def build(self, key: ModelKey, ctx: BuildContext) -> Any:
        """The live value for ``key`` (weights read now); patches in ``key.patches`` are the store's business."""

    def nbytes(self, value: Any) -> int:
        """Bytes ``value`` owns (counted in the store's budget)."""


class Plan(Protocol):
    """A family's header-only plan of a checkpoint."""
    arch: str

    def info(self) -> tuple:
        """(name, value) pairs for the refs' ``info``: arch, prediction type, scaling factor, scheduler ..."""

    def components(self) -> dict[str, str]:
        """{'MODEL'|'CLIP'|'VAE': component name} for the parts this checkpoint holds."""


class Family(Protocol):
    """Checkpoints of one architecture family. ``priority``: families are asked in descending order; the SD family
    is the fallback (0), so a family whose keys share SD's prefixes (SD3 uses ``model.diffusion_model.``) claims
    first."""
    name: str
    priority: int

    def claims(self, src: Source) -> bool: ...

    def plan(self, src: Source) -> Plan: ...

    def build(self, component: str, src: Source, plan: Plan, key: ModelKey, ctx: BuildContext) -> Any: ...

    def patch(self, component: str, base: Any, lora_state: dict, strength: float) -> Any:
        """A LoRA-patched copy of ``base`` sharing unchanged tensors (``_loom_own_bytes`` = the new ones)."""
