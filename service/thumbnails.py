"""Make the template browser's thumbnails of Loom's workflows by running them.

    python -m service.thumbnails [NAME...]

Runs each workflows/<name>.json with the engine on the checkout's models (CPU, one thread), takes the first image
it saves or previews, scales it to 256 px on the long side (nearest neighbour: the bundled model draws 64x64) and
writes workflows/thumbnails/<name>.jpg, served at /api/workflow_templates/loom/<name>.jpg.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make(names: list[str] | None = None, out_dir: Path | None = None) -> dict[str, Path]:
    import torch
    from PIL import Image

    from engine.context import Env
    from engine.executor import Executor
    from engine.folders import ModelFolders
    from modelstore.models import ModelStore
    from nodes import default_registry

    torch.set_num_threads(1)
    out_dir = out_dir or ROOT / "workflows" / "thumbnails"
    out_dir.mkdir(parents=True, exist_ok=True)
    names = names or sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
    made = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        env = Env(input_dir=t / "input", output_dir=t / "output", temp_dir=t / "temp", models_dir=ROOT / "models",
                  folders=ModelFolders(ROOT / "models"),
                  model_store_factory=lambda e: ModelStore(e.folders, device="cpu", dtype="fp32"))
        ex = Executor(default_registry(), env)
        for name in names:
            r = ex.run(json.loads((ROOT / "workflows" / f"{name}.json").read_text()))
            if r.status != "success":
                raise RuntimeError(f"{name}: {(r.error or {}).get('exception_message')}")
            imgs = [i for ui in r.outputs.values() for i in (ui or {}).get("images", [])]
            img = imgs[0]
            base = env.output_dir if img.get("type", "output") == "output" else env.temp_dir
            im = Image.open(base / img["subfolder"] / img["filename"]).convert("RGB")
            k = 256 / max(im.size)
            im = im.resize((max(1, round(im.width * k)), max(1, round(im.height * k))),
                           Image.NEAREST if k >= 2 else Image.LANCZOS)
            made[name] = out_dir / f"{name}.jpg"
            im.save(made[name], quality=85)
            print(f"{name}: {made[name]}", flush=True)
    return made


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m service.thumbnails", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*")
    make(ap.parse_args(argv).names or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
