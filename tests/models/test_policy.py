"""Device/dtype policy (CUDA branches as a pure function), OOM retry, diffusers folders."""
import json

import pytest
import torch

from engine.folders import ModelFolders
from modelstore.devices import OutOfMemory, choose_device_dtype
from modelstore.models import ModelStore


@pytest.mark.parametrize("cuda,bf16,dev,dt,want", [
    (True, True, None, None, ("cuda", "float16")),
    (True, True, None, "bf16", ("cuda", "bfloat16")),
    (True, False, None, "fp32", ("cuda", "float32")),
    (True, True, "cpu", None, ("cpu", "float32")),
    (False, False, None, None, ("cpu", "float32")),
    (False, False, None, "bf16", ("cpu", "bfloat16")),
    (True, True, "cuda:1", "torch.float16", ("cuda:1", "float16")),
])
def test_policy(cuda, bf16, dev, dt, want):
    assert choose_device_dtype(cuda, bf16, dev, dt) == want


@pytest.mark.parametrize("cuda,bf16,dev,dt", [(True, False, None, "bf16"), (False, False, "cuda", None),
                                              (False, False, None, "fp16"), (True, True, None, "int8")])
def test_policy_refuses(cuda, bf16, dev, dt):
    with pytest.raises(ValueError):
        choose_device_dtype(cuda, bf16, dev, dt)


def test_bf16_store_on_cpu(models_root):
    model = ModelStore(ModelFolders(models_root), device="cpu", dtype="bf16").load_checkpoint("tiny-sd1.safetensors")[0]
    assert model.key.dtype == "bfloat16" and next(model.get().parameters()).dtype == torch.bfloat16


def test_oom_retry_then_clear_error(models_root):
    store = ModelStore(ModelFolders(models_root), device="cpu")
    model = store.load_checkpoint("tiny-sd1.safetensors")[0]
    calls = []

    def flaky():
        calls.append(model.get())
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return "ok"

    assert store.retry_on_oom(flaky) == "ok" and len(calls) == 2
    assert calls[1] is not calls[0]     # CPU store: free() dropped the model, the retry reloaded it

    def always():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(OutOfMemory, match="out of GPU memory in sampling"):
        store.retry_on_oom(always, what="sampling")


def test_diffusers_folder(models_root, tiny_sd1, tmp_path):
    unet, vae, te = tiny_sd1
    d = models_root / "checkpoints" / "tiny-diffusers"
    unet.save_pretrained(d / "unet")
    vae.save_pretrained(d / "vae")
    te.save_pretrained(d / "text_encoder")
    (d / "scheduler").mkdir()
    (d / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "epsilon"}))
    (d / "model_index.json").write_text(json.dumps({
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "scheduler": ["diffusers", "PNDMScheduler"]}))
    store = ModelStore(ModelFolders(models_root), device="cpu")
    assert "tiny-diffusers" in store.folders.list("checkpoints")
    model, clip, vref = store.load_checkpoint("tiny-diffusers")
    assert model.meta["arch"] == "sd1"
    ids = torch.randint(0, 49408, (1, 77))
    with torch.no_grad():
        assert torch.equal(te(ids)[0], clip.get().encoders[0](ids)[0])
    for a, b in ((unet, model.get()), (vae, vref.get())):
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb)  # the same keys in the same order: none missing on either side
        for k, v in sa.items():
            assert torch.equal(v, sb[k]), k
