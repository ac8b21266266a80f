"""Typed node declarations.

A node is a small class: its docstring is the help text, class attributes declare its inputs and
outputs, and ``run(self, ctx, **inputs)`` computes the outputs. One declaration feeds validation,
ComfyUI's ``/object_info`` schema (engine/schema.py) and the JSON Schema of workflow files.

    class ImageInvert(Node):
        '''Inverts an image: every channel becomes 1 - value.'''
        category = "image"
        inputs = (Socket("image", "IMAGE"),)
        outputs = (Output("IMAGE"),)

        def run(self, ctx, image):
            return (1.0 - image,)
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

class _Missing:
    """Sentinel: an input declared without a default."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
HIDDEN_TYPES = {"PROMPT": "prompt", "EXTRA_PNGINFO": "extra_pnginfo", "UNIQUE_ID": "unique_id"}
MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF
MAX_RESOLUTION = 16384


@dataclass(frozen=True)
class Input:
    """One declared input: a widget (INT/FLOAT/STRING/BOOLEAN/COMBO) or a socket (MODEL, LATENT, ...).

    ``options`` is the combo's choices: a sequence, or a callable ``options(env) -> list`` for lists
    that depend on files (checkpoints, input images). ``check_options=False`` skips the membership
    check at validation (the node validates the value itself, like ComfyUI's LoadImage).
    """

    name: str
    type: str
    default: Any = MISSING
    min: float | int | None = None
    max: float | int | None = None
    step: float | int | None = None
    round: float | bool | None = None
    options: Sequence[Any] | Callable[[Any], Sequence[Any]] | None = None
    check_options: bool = True
    tooltip: str = ""
    optional: bool = False
    extra: dict = field(default_factory=dict)  # extra /object_info options (multiline, image_upload, ...)

    @property
    def is_widget(self) -> bool:
        """Shown as a widget in the editor (and so present in a UI node's widgets_values)."""
        return self.type in WIDGET_TYPES and not self.extra.get("forceInput")

    def choices(self, env: Any) -> list:
        opts = self.options
        if callable(opts):
            opts = opts(env)
        return list(opts or ())


def Int(name, default=0, *, min=None, max=None, step=None, tooltip="", optional=False, **extra) -> Input:
    return Input(name, "INT", default, min, max, step, tooltip=tooltip, optional=optional, extra=extra)


def Float(name, default=0.0, *, min=None, max=None, step=None, round=None, tooltip="", optional=False, **extra) -> Input:
    return Input(name, "FLOAT", default, min, max, step, round, tooltip=tooltip, optional=optional, extra=extra)


def String(name, default="", *, multiline=False, tooltip="", optional=False, **extra) -> Input:
    if multiline:
        extra = {"multiline": True, **extra}
    return Input(name, "STRING", default, tooltip=tooltip, optional=optional, extra=extra)


def Boolean(name, default=False, *, tooltip="", optional=False, **extra) -> Input:
    return Input(name, "BOOLEAN", default, tooltip=tooltip, optional=optional, extra=extra)


def Combo(name, options, default=MISSING, *, check_options=True, tooltip="", optional=False, **extra) -> Input:
    return Input(name, "COMBO", default, options=options, check_options=check_options, tooltip=tooltip,
                 optional=optional, extra=extra)


def Socket(name, type, *, tooltip="", optional=False, **extra) -> Input:
    """A link-only input. For a widget type (INT, STRING, ...) this is ComfyUI's ``forceInput``."""
    if type in WIDGET_TYPES:
        extra = {"forceInput": True, **extra}
    return Input(name, type, tooltip=tooltip, optional=optional, extra=extra)


def Seed(name="seed", *, tooltip="The random seed used for creating the noise.") -> Input:
    return Int(name, 0, min=0, max=MAX_SEED, tooltip=tooltip, control_after_generate=True)


@dataclass(frozen=True)
class Output:
    """One named, typed output; its position is ComfyUI's output index."""

    type: str
    name: str | None = None
    tooltip: str | None = None
    is_list: bool = False

    @property
    def label(self) -> str:
        return self.name or self.type


@dataclass
class Result:
    """What ``run`` may return instead of a plain tuple: outputs plus a ``ui`` dict for the editor
    (``{"images": [{"filename", "subfolder", "type"}]}``)."""

    outputs: tuple = ()
    ui: dict | None = None


class Node:
    """Base class of every node. Subclasses set the class attributes below and implement run()."""

    class_type: ClassVar[str] = ""  # ComfyUI's class name; defaults to the Python class name
    display_name: ClassVar[str] = ""
    category: ClassVar[str] = "sd"
    version: ClassVar[str] = "1.0.0"  # bump when results change: it enters the cache key
    inputs: ClassVar[tuple[Input, ...]] = ()
    outputs: ClassVar[tuple[Output, ...]] = ()
    hidden: ClassVar[tuple[str, ...]] = ()  # subset of HIDDEN_TYPES
    output_node: ClassVar[bool] = False
    not_idempotent: ClassVar[bool] = False  # never served from cache (randomness, clocks)
    deprecated: ClassVar[bool] = False
    experimental: ClassVar[bool] = False
    python_module: ClassVar[str] = "nodes"

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if not cls.__dict__.get("class_type"):
            cls.class_type = cls.__name__
        if not cls.__dict__.get("display_name"):
            cls.display_name = cls.class_type
        cls._input_map = {i.name: i for i in cls.inputs}

    @classmethod
    def description(cls) -> str:
        return inspect.cleandoc(cls.__doc__ or "")

    @classmethod
    def input(cls, name: str) -> Input | None:
        return cls._input_map.get(name)

    @classmethod
    def estimate_bytes(cls, **inputs) -> int | None:
        """Bytes of the outputs ``run`` would allocate for these arguments (the same ones ``run`` gets:
        linked tensors and constants), or None when unknown. Tensor-creating nodes declare it, so the
        engine refuses a node that cannot fit the memory budget before it allocates (engine.budget)."""
        return None

    @classmethod
    def fingerprint(cls, env: Any, **constants) -> Any:
        """Extra cache-key material for results that depend on something outside the inputs
        (a file's content). Return None for none, or ``float('nan')`` to always re-run."""
        return None

    @classmethod
    def check(cls, env: Any, **constants) -> dict[str, str] | None:
        """Custom validation on constant inputs: return ``{input_name: problem}`` or None."""
        return None

    @classmethod
    def warnings(cls, env: Any, **constants) -> list[str]:
        """Validation warnings on constant inputs (the workflow still runs): e.g. a prompt naming an embedding
        that is not installed. Return a list of messages."""
        return []

    def run(self, ctx, **inputs):  # pragma: no cover - abstract
        raise NotImplementedError(f"{self.class_type}.run")


class Registry:
    """The node catalogue: an explicit list of node classes, looked up by class_type."""

    def __init__(self, classes: Sequence[type[Node]] = ()):
        self._classes: dict[str, type[Node]] = {}
        for c in classes:
            self.add(c)

    def add(self, cls: type[Node]) -> None:
        if cls.class_type in self._classes and self._classes[cls.class_type] is not cls:
            raise ValueError(f"duplicate node class_type {cls.class_type!r}")
        self._classes[cls.class_type] = cls

    def get(self, class_type: str) -> type[Node] | None:
        return self._classes.get(class_type)

    def __contains__(self, class_type: str) -> bool:
        return class_type in self._classes

    def __iter__(self):
        return iter(self._classes.values())

    def __len__(self) -> int:
        return len(self._classes)

    def names(self) -> list[str]:
        return list(self._classes)

    def suggest(self, class_type: str) -> list[str]:
        import difflib

        return difflib.get_close_matches(str(class_type), self._classes, n=3, cutoff=0.6)
