"""Loom's model store, the only layer that loads weights: ``ModelStore`` (``models``) owns a ``Residency``
(``residency``: entries, memory budget, offload/drop, OOM guard) and a ``Loader`` (``loader``: file sources with
headers cached by identity, tokenizers, and the kind loaders and checkpoint families gathered from ``kinds/``).
Single-file checkpoint reading lives in ``tensorfile``, ``arch``, ``plan``, ``convert``, ``build`` (re-exported by
``checkpoint``); LoRA in ``lora``; handles in ``refs``. Extension: a new model kind (ControlNet, CLIP vision ...)
or architecture family (SD3, Flux ...) is a module in ``kinds/`` listed in ``kinds.MODULES``."""
