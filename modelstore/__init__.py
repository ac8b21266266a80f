"""Loom's model store: single-file checkpoints -> family detection -> diffusers/transformers modules,
devices and dtypes, residency under a memory budget, LoRA patches. The only layer that loads weights."""
