"""What a running node sees: its environment (folders, model store), progress and cancellation."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import Interrupted
from .events import Event
from .folders import ModelFolders


class CancelToken:
    """Cooperative cancellation shared between an adapter and a running prompt (thread-safe)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def reset(self) -> None:
        self._event.clear()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass
class Env:
    """Services handed to nodes. The engine does not interpret them; nodes and adapters do.

    ``folders`` lists and resolves model files (torch-free, cheap: what validation and ``/object_info`` use for
    combo options); it defaults to ``ModelFolders(models_dir)``. The model store is created on first use by
    ``model_store()`` (once, behind a lock: the worker thread and a route may ask together), from
    ``model_store_factory(env)``, which should build it over ``env.folders``. Validation never creates it, so
    model-free work never imports torch.
    """

    input_dir: Path = Path("input")
    output_dir: Path = Path("output")
    temp_dir: Path = Path("temp")
    models_dir: Path = Path("models")
    extra: dict = field(default_factory=dict)
    model_store_factory: Callable[["Env"], Any] | None = None
    folders: ModelFolders | None = None
    _models: Any = field(default=None, repr=False)
    _models_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.folders is None:
            self.folders = ModelFolders(self.models_dir)

    def model_store(self) -> Any:
        """The model store, created on the first call (RuntimeError when this environment has none)."""
        with self._models_lock:
            if self._models is None:
                if self.model_store_factory is None:
                    raise RuntimeError("this environment has no model store")
                self._models = self.model_store_factory(self)
            return self._models

    @property
    def has_model_store(self) -> bool:
        """Whether the store exists already (asking never creates it)."""
        return self._models is not None


class NodeContext:
    """Handed to ``Node.run``: report progress, check cancellation, reach the environment."""

    __slots__ = ("env", "prompt_id", "node_id", "class_type", "_cancel", "_emit", "_seq")

    def __init__(self, env: Env, prompt_id: str, node_id: str, class_type: str,
                 cancel: CancelToken, emit: Callable[[Event], None]):
        self.env = env
        self.prompt_id = prompt_id
        self.node_id = node_id
        self.class_type = class_type
        self._cancel = cancel
        self._emit = emit

    def check_cancelled(self) -> None:
        """Raise ``Interrupted`` if the run was cancelled. Long loops call this every iteration."""
        if self._cancel.cancelled:
            raise Interrupted(f"interrupted in node {self.node_id}")

    def progress(self, value: int, total: int, preview: Callable[[], Any] | None = None) -> None:
        """Report ``value`` of ``total`` steps done (ints), with an optional lazy preview image."""
        self.check_cancelled()
        self._emit(Event("progress", {"value": int(value), "max": int(total), "prompt_id": self.prompt_id,
                                      "node": self.node_id}, preview=preview))

    def warn(self, message: str) -> None:
        """Report a problem that did not stop the node (Loom's ``warning`` event: prompt, node, message)."""
        self._emit(Event("warning", {"prompt_id": self.prompt_id, "node": self.node_id,
                                     "class_type": self.class_type, "message": str(message)}))
