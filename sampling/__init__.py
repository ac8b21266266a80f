"""Loom's sampling core: k-diffusion's sigma-space formulation (Karras et al. 2022) with ComfyUI's samplers,
schedulers and model samplings, written from the papers and pinned by ComfyUI 0.3.75's numbers
(tests/sampling/data). Torch maths only; it imports nothing from engine/, modelstore/, nodes/, service/ or the
CLI. Importing the package itself is torch-free (``sampling.names``); the modules import torch.

- ``model_sampling``: parameterisations (EPS, V, EDM, X0, CONST) and sigma<->timestep maps
- ``schedulers``: the named and parametric sigma schedules, KSampler's step/denoise rules
- ``noise``: initial noise, seeded step noise, Brownian-tree noise
- ``guidance``: CFG in x0 space with post-CFG hooks
- ``ksampler.run``: one run (start scaling, sampler, final un-scaling); ``registry``: name -> sampler function
"""
