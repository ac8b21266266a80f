"""The layer rules of pyproject.toml's [tool.importlinter] contracts hold (engine core without torch or the model
store, nodes without the service, no import loops inside a package ...), checked by running ``lint-imports``."""
import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    exe = Path(sys.executable).with_name("lint-imports")
    assert exe.is_file(), "lint-imports is missing: install the test extra (pip install -e '.[test]')"
    r = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and ", 0 broken." in r.stdout, r.stdout + r.stderr


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_server_module_never_imports_cli():
    """server.py is a top-level module, so import-linter cannot take it as a source: checked here."""
    assert "cli" not in _imports(ROOT / "server.py")
