"""The store's extension point: a kind in its own module, listed in ``modelstore.kinds.MODULES``, is loaded,
shared, budgeted and refused like the built-in ones, with no change to the store; clashing names are errors."""
import pytest
import torch
from safetensors.torch import save_file

from engine.folders import ModelFolders
from modelstore import kinds
from modelstore.models import ModelStore
from modelstore.tensorfile import CheckpointError


@pytest.fixture
def example_kind(monkeypatch):
    monkeypatch.setattr(kinds, "MODULES", kinds.MODULES + ["tests.models.kind_example"])


def test_a_new_kind_loads_through_the_store(example_kind, tmp_path):
    (tmp_path / "controlnet").mkdir()
    w, b = torch.randn(3, 5), torch.randn(3)
    save_file({"weight": w, "bias": b}, str(tmp_path / "controlnet" / "lin.safetensors"))
    save_file({"other": w}, str(tmp_path / "controlnet" / "bad.safetensors"))
    store = ModelStore(ModelFolders(tmp_path), device="cpu", budget_bytes=10_000)
    ref = store.load("example_linear", "lin.safetensors")
    assert ref.kind == "EXAMPLE" and ref.meta == {"name": "lin.safetensors", "features": (3, 5)}
    m = ref.get()
    assert torch.equal(m.weight, w) and torch.equal(m.bias, b) and m is store.load("example_linear", "lin.safetensors").get()
    assert [(k.component, where, n) for k, where, n in store.loaded()] == [("example_linear", "device", 4 * 18)]
    with pytest.raises(CheckpointError, match="no 'weight' tensor"):
        store.load("example_linear", "bad.safetensors")


def test_unknown_component_and_clashing_names_are_errors(example_kind, monkeypatch, tmp_path):
    store = ModelStore(ModelFolders(tmp_path), device="cpu")
    with pytest.raises(CheckpointError, match="no loader for model component 'nope'"):
        store.load("nope", "x.safetensors")
    monkeypatch.setattr(kinds, "MODULES", kinds.MODULES + ["tests.models.kind_example"])
    with pytest.raises(ValueError, match="component 'example_linear' already has a loader"):
        kinds.gather()


def test_families_are_asked_by_priority():
    _, families = kinds.gather()
    assert [f.name for f in families][-1] == "sd" and families[-1].priority == 0
    assert [f.priority for f in families] == sorted((f.priority for f in families), reverse=True)
