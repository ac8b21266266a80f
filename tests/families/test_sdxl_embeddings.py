"""Textual-inversion embeddings with SDXL's two text encoders: an SDXL embedding (clip_l + clip_g vectors) enters
each encoder with its own vectors through CLIPTextEncodeSDXL; one without vectors for CLIP-G is used by CLIP-L and
reported for CLIP-G as a warning, never silently."""
from __future__ import annotations

import torch
from safetensors.torch import save_file

from tests.families.test_sdxl_nodes import _Ctx, xl_env  # noqa: F401 (the tiny SDXL checkpoint fixture)


class _WarnCtx(_Ctx):
    def __init__(self, env):
        super().__init__(env)
        self.warnings = []

    def warn(self, message):
        self.warnings.append(message)


def test_sdxl_embedding_per_encoder(xl_env):  # noqa: F811
    from nodes.text_encode_families import CLIPTextEncodeSDXL

    env = xl_env
    store = env.model_store()
    _, clip, _ = store.load_checkpoint("xl.safetensors")
    with store.using(clip) as (tenc,):
        vecs = []
        for te, tok in zip(tenc.encoders, tenc.tokenizers):
            ids = tok(["red", "circle"], add_special_tokens=False)["input_ids"]
            w = getattr(te, "text_model", te).embeddings.token_embedding.weight
            vecs.append(torch.stack([w[i[0]] for i in ids]).detach().clone().float())
    d = env.models_dir / "embeddings"
    d.mkdir(exist_ok=True)
    save_file({"clip_l": vecs[0], "clip_g": vecs[1]}, str(d / "xlred.safetensors"))
    save_file({"clip_l": vecs[0]}, str(d / "lonly.safetensors"))  # vectors for CLIP-L only
    node = CLIPTextEncodeSDXL()
    args = (64, 64, 0, 0, 64, 64)
    ctx = _WarnCtx(env)
    want = node.run(ctx, clip, *args, "a red circle", "a red circle")[0][0]
    got = node.run(ctx, clip, *args, "a embedding:xlred", "a embedding:xlred")[0][0]
    assert ctx.warnings == []
    assert torch.allclose(got[0], want[0], atol=1e-5)
    assert torch.allclose(got[1]["pooled_output"], want[1]["pooled_output"], atol=1e-5)
    # an embedding with CLIP-L vectors only: used by CLIP-L, reported for CLIP-G (the tiny encoders share a width,
    # so the SD1-width case is covered by vectors_for's unit test)
    node.run(ctx, clip, *args, "a embedding:lonly", "a embedding:lonly")
    assert len(ctx.warnings) == 1 and "lonly" in ctx.warnings[0] and "text encoder 2" in ctx.warnings[0]
    assert CLIPTextEncodeSDXL.warnings(env, text_g="embedding:ghost", text_l="x") == \
        ["embedding 'ghost' not found in models/embeddings; the word will be ignored"]
