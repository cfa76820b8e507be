"""The built wheel installs only bertdesk-named top-level packages."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_neutral
ROOT = Path(__file__).resolve().parent.parent


def test_wheel_top_level_names(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("bertdesk-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"bertdesk", "bertdesk_gui", "bertdesk_models"}
    assert "bertdesk_models/base.json" in names
    assert not any(n.startswith(("gui/", "models/", "tests/")) for n in names)


def test_library_never_imports_qt():
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys, bertdesk, bertdesk.io, bertdesk.layers, bertdesk.models, bertdesk.cli;"
         "bad = [m for m in sys.modules if m.startswith(('PySide6', 'PyQt', 'shiboken'))];"
         "print(bad); sys.exit(1 if bad else 0)"],
        capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_layers_use_keras_ops_only():
    """Every layer module is backend-neutral; `random_bits.py`, the one module
    that draws raw bits from each backend, imports them only inside the
    function for the running backend (never at module level)."""
    import ast

    backends = ("tensorflow", "jax", "torch")
    for path in (ROOT / "bertdesk" / "layers").glob("*.py"):
        tree = ast.parse(path.read_text())
        nested = path.name == "random_bits.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            hits = [n for n in names if n.split(".")[0] in backends]
            if not hits:
                continue
            assert nested, f"{path.name} imports a backend: {hits}"
            assert node not in tree.body, f"{path.name} imports {hits} at module level"
