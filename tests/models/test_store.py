"""Loading a tiny SD1-layout single-file checkpoint through the store: identical weights and outputs."""
import pytest
import torch

from engine.folders import ModelFolders, ModelNotFoundError
from modelstore.models import ModelStore
from modelstore.refs import TextEncoders
from modelstore.tensorfile import PickleRefused


@pytest.fixture
def store(models_root):
    return ModelStore(ModelFolders(models_root), device="cpu")


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_checkpoint_roundtrip(store, tiny_sd1):
    unet, vae, te = tiny_sd1
    model, clip, vae_ref = store.load_checkpoint("tiny-sd1.safetensors")
    assert model.meta["arch"] == "sd1" and model.meta["prediction_type"] == "epsilon"
    assert model.meta["scaling_factor"] == 0.18215 and not model.meta["inpaint"]
    sched = dict(model.meta["scheduler_config"])
    assert (sched["beta_start"], sched["beta_end"], sched["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")
    u, v, t = model.get(), vae_ref.get(), clip.get()
    assert isinstance(t, TextEncoders) and t.arch == "sd1"
    _same_weights(unet, u)
    _same_weights(vae, v)
    _same_weights(te, t.encoders[0])
    assert type(next(iter(u.attn_processors.values()))).__name__ == "AttnProcessor2_0"
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 64, generator=g)
    img = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    ids = t.tokenizers[0]("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    with torch.no_grad():
        assert torch.equal(unet(x, 500, ctx).sample, u(x, 500, ctx).sample)
        assert torch.equal(vae.decode(x).sample, v.decode(x).sample)
        assert torch.equal(vae.encode(img).latent_dist.mean, v.encode(img).latent_dist.mean)
        assert torch.equal(te(ids)[0], t.encoders[0](ids)[0])


def test_refs_are_cheap_and_shared(store):
    a = store.load_checkpoint("tiny-sd1.safetensors")
    b = store.load_checkpoint("tiny-sd1.safetensors")
    assert a == b and hash(a[0]) == hash(b[0]) and a[0] != a[2]
    assert a[0].__loom_nbytes__() <= 64
    assert a[0].get() is b[0].get()
    assert store.stats["loads"] == 1 and store.stats["hits"] == 1
    skip = a[1].with_options(clip_skip=-2)
    assert skip.option("clip_skip") == -2 and skip != a[1] and skip.get() is a[1].get()


def test_standalone_vae_ldm_and_diffusers_layout(store, models_root, tiny_sd1):
    from safetensors.torch import save_file

    vae = tiny_sd1[1]
    _same_weights(vae, store.load_vae("tiny-vae.safetensors").get())
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(models_root / "vae" / "diff-vae.safetensors"))
    _same_weights(vae, store.load_vae("diff-vae.safetensors").get())


def test_missing_checkpoint_lists_available(store):
    with pytest.raises(ModelNotFoundError) as ei:
        store.load_checkpoint("nope.safetensors")
    assert "tiny-sd1.safetensors" in ei.value.available


def test_pickle_refused_unless_allowed(models_root, tiny_sd1):
    from safetensors.torch import load_file

    sd = load_file(str(models_root / "checkpoints" / "tiny-sd1.safetensors"))
    torch.save(sd, models_root / "checkpoints" / "tiny-sd1.ckpt")
    with pytest.raises(PickleRefused, match="allow_pickle=True"):
        ModelStore(ModelFolders(models_root), device="cpu").load_checkpoint("tiny-sd1.ckpt")
    model, _, _ = ModelStore(ModelFolders(models_root), device="cpu", allow_pickle=True).load_checkpoint("tiny-sd1.ckpt")
    _same_weights(tiny_sd1[0], model.get())
    (models_root / "checkpoints" / "tiny-sd1.ckpt").unlink()


def test_lru_drop_and_reload_under_budget(models_root):
    store = ModelStore(ModelFolders(models_root), device="cpu", budget_bytes=10_000_000)
    model, clip, vae = store.load_checkpoint("tiny-sd1.safetensors")
    u = model.get()                       # ~8.8 MB
    vae.get()                             # ~4.1 MB: over budget -> the UNet (LRU) is dropped
    assert [k.component for k, _, _ in store.loaded()] == ["vae"]
    assert store.stats["drops"] == 1
    u2 = model.get()                      # reloaded, VAE dropped
    assert u2 is not u and [k.component for k, _, _ in store.loaded()] == ["unet"]
    with store.using(model, vae) as (m, v):   # pinned: both stay resident even over budget
        assert {k.component for k, _, _ in store.loaded()} == {"unet", "vae"}
    store.unload_all()
    assert store.loaded() == []


def test_offload_path_under_budget(models_root):
    """The CUDA offload path, exercised on CPU: entries move to the offload device instead of dropping."""
    store = ModelStore(ModelFolders(models_root), device="cpu", budget_bytes=10_000_000)
    store.offload_to = "cpu"
    model, clip, vae = store.load_checkpoint("tiny-sd1.safetensors")
    u = model.get()
    vae.get()
    assert dict((k.component, w) for k, w, _ in store.loaded()) == {"unet": "offloaded", "vae": "device"}
    assert model.get() is u and store.stats["offloads"] == 2    # back on device; VAE offloaded in turn
    store.free()
    assert all(w == "offloaded" for _, w, _ in store.loaded())


def test_changed_file_is_a_new_model(store, models_root):
    import os

    m1 = store.load_checkpoint("tiny-sd1.safetensors")[0]
    p = models_root / "checkpoints" / "tiny-sd1.safetensors"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    m2 = store.load_checkpoint("tiny-sd1.safetensors")[0]
    assert m1 != m2
