"""The built wheel installs only bertdesk-named top-level packages."""

import json
import os
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
    """Every layer module is backend-neutral; `random_bits.py` (raw bits from
    each backend), `fused_kernels.py` (PyTorch's single-kernel gradients) and
    `int8_kernels.py` (oneDNN's integer product), `cpu_products.py`
    (oneDNN's float32 product) and `packed_tokens.py` (eager PyTorch's
    batches without their padding) import a backend only inside the
    function for it (never at module level)."""
    import ast

    backends = ("tensorflow", "jax", "torch")
    for path in (ROOT / "bertdesk" / "layers").glob("*.py"):
        tree = ast.parse(path.read_text())
        nested = path.name in ("random_bits.py", "fused_kernels.py", "int8_kernels.py",
                               "cpu_products.py", "packed_tokens.py")
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


@pytest.mark.parametrize("backend", ["torch", "tensorflow", "jax"])
def test_command_line_imports_keras_without_unused_integrations(backend):
    """`bertdesk` jobs import Keras without JAX (off the JAX backend),
    scikit-learn and pandas, which Keras imports whenever they are
    installed; they still import normally afterwards."""
    code = (
        "import sys, json\n"
        "from bertdesk.cli import main\n"
        "status = main(['info', sys.argv[1]])\n"
        "loaded = [m for m in ('jax', 'sklearn', 'tensorflow', 'pandas') if m in sys.modules]\n"
        "import jax, sklearn, pandas\n"
        "print('RESULT', json.dumps([status, sys.modules['keras'].backend.backend(), loaded]))\n")
    import bertdesk

    status, loaded_backend, loaded = _run_python(code, backend, bertdesk.bundled_checkpoint())
    assert status == 0 and loaded_backend == backend
    expected = {"torch": [], "tensorflow": ["tensorflow"], "jax": ["jax"]}[backend]
    assert loaded == expected


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_fine_tuning_job_never_loads_tensorflow(backend, tmp_path, tiny_model):
    """Issue 6's memory target: on JAX and PyTorch the whole command-line
    job (fine-tune with validation and checkpoints, evaluate, predict) runs
    without TensorFlow in the process (Keras would import it to seed
    `tf.data` and to probe types while saving)."""
    train = tmp_path / "train.csv"
    rows = (ROOT / "assets" / "sentiment_en.csv").read_text(encoding="utf-8").splitlines()
    train.write_text("\n".join(rows[:65]) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    code = (
        "import json, sys\n"
        "from bertdesk.cli import main\n"
        "train, model, run = sys.argv[1:4]\n"
        "codes = [main(['finetune', '--train', train, '--model', model, '--output', run,\n"
        "               '--epochs', '1', '--max-length', '32', '--events', 'jsonl']),\n"
        "         main(['evaluate', '--model', run + '/model', '--data', train]),\n"
        "         main(['predict', '--model', run + '/model', '--data', train,\n"
        "               '--output', run + '/pred.jsonl'])]\n"
        "print('RESULT', json.dumps([codes, 'tensorflow' in sys.modules]))\n")
    codes, tensorflow_loaded = _run_python(code, backend, train, tiny_model, run)
    assert codes == [0, 0, 0]
    assert (run / "pred.jsonl").is_file()
    assert not tensorflow_loaded


def test_pytorch_jobs_leave_out_dynamo_and_pandas_until_used(tiny_model):
    """On PyTorch, Keras imports (lean) without `torch._dynamo` (71 MB) and
    pandas (64-66 MB); loading a model and predicting with each task's
    model, their heads initialised at random, loads neither (the backbone
    is built without computing on PyTorch's meta device); both import
    normally afterwards. The stand-in `torch._dynamo.disable` Keras got
    runs a function as it is until `torch._dynamo` loads, then keeps it out
    of `torch.compile`'s graphs as the real decorator does."""
    code = (
        "import json, sys\n"
        "from bertdesk.lean_import import import_keras_lean\n"
        "keras = import_keras_lean()\n"
        "names = ('torch._dynamo', 'pandas')\n"
        "after_import = [m for m in names if m in sys.modules]\n"
        "import numpy as np, bertdesk\n"
        "from bertdesk.tasks.bert_question_answerer import BertQuestionAnswerer\n"
        "from bertdesk.tasks.bert_text_classifier import BertTextClassifier\n"
        "from bertdesk.tasks.bert_token_classifier import BertTokenClassifier\n"
        "x = {'token_ids': np.ones((2, 8), 'int32'), 'segment_ids': np.zeros((2, 8), 'int32'),\n"
        "     'padding_mask': np.ones((2, 8), 'int32')}\n"
        "backbone = bertdesk.load_backbone(sys.argv[1])\n"
        "for model in (BertTextClassifier(backbone, num_classes=2),\n"
        "              BertTokenClassifier(backbone, num_classes=3), BertQuestionAnswerer(backbone)):\n"
        "    model.predict_on_batch(x)\n"
        "pretraining = bertdesk.BertPretrainingModel(backbone)\n"
        "pretraining.predict_on_batch(dict(x, mask_positions=np.zeros((2, 2), 'int32')))\n"
        "after_predicting = [m for m in names if m in sys.modules]\n"
        "import torch\n"
        "from bertdesk.lean_import import lazy_dynamo_disable\n"
        "def double(x):\n"
        "    return x * 2\n"
        "kept_out = lazy_dynamo_disable(double)\n"
        "ran = kept_out(torch.ones(2)).tolist() == [2.0, 2.0]\n"
        "loaded_by_the_call = 'torch._dynamo' in sys.modules\n"
        "import pandas, torch._dynamo\n"
        "def compiles(f):\n"
        "    try:\n"
        "        torch.compile(lambda x: f(x) + 1, fullgraph=True, backend='eager')(torch.ones(2))\n"
        "        return True\n"
        "    except Exception:\n"
        "        torch._dynamo.reset()\n"
        "        return False\n"
        "graphs = [compiles(double), compiles(kept_out), compiles(torch._dynamo.disable(double))]\n"
        "print('RESULT', json.dumps([after_import, after_predicting,\n"
        "                            [ran, loaded_by_the_call], graphs]))\n")
    after_import, after_predicting, called, graphs = _run_python(code, "torch", tiny_model)
    assert after_import == [] and after_predicting == []
    assert called == [True, False]  # ran as it is, without loading torch._dynamo
    # in one graph as it is; kept out like torch._dynamo.disable's once loaded
    assert graphs == [True, False, False]


def _run_python(code, backend, *args, **env_changes):
    """Run `code` in a fresh interpreter on `backend` with `args` as argv;
    return the JSON it printed after "RESULT "."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", **env_changes}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(line[0][len("RESULT "):])


def test_the_desktop_app_starts_without_keras_and_loads_models_lean(tmp_path, tiny_model):
    """The app's window comes up without Keras or a backend (it imported all
    of Keras, with JAX and scikit-learn, through reading checkpoint names:
    3.5 s and 800 MB before the window against 0.6 s and 206 MB); its first
    model load imports Keras without JAX and scikit-learn."""
    pytest.importorskip("PySide6")
    import bertdesk
    from bertdesk.tasks.bert_text_classifier import BertTextClassifier
    from bertdesk.tasks.saving import save_task_model

    model = BertTextClassifier(bertdesk.load_backbone(tiny_model), num_classes=2)
    save_task_model(model, tmp_path / "model", bertdesk.load_tokenizer(tiny_model), "classify",
                    {"problem_type": "single_label", "num_classes": 2, "labels": ["neg", "pos"]},
                    {"max_length": 32, "text_pair_column": None})
    code = (
        "import json, sys\n"
        "from PySide6.QtCore import QSettings\n"
        "from PySide6.QtWidgets import QApplication\n"
        "app = QApplication([])\n"
        "from bertdesk_gui.main_window import MainWindow\n"
        "from bertdesk_gui.state import AppState\n"
        "home, folder = sys.argv[1:3]\n"
        "w = MainWindow(AppState(history_path=home + '/runs.json', runs_dir=home + '/runs'),\n"
        "               QSettings(home + '/settings.ini', QSettings.IniFormat))\n"
        "w.show()\n"
        "app.processEvents()\n"
        "names = ('keras', 'torch', 'jax', 'tensorflow', 'sklearn')\n"
        "shown = [m for m in names if m in sys.modules]\n"
        "model = w.inspect_page._loaded_model(folder)\n"
        "loaded = [m for m in names if m in sys.modules]\n"
        "print('RESULT', json.dumps([shown, loaded, model.task]))\n")
    shown, loaded, task = _run_python(code, "torch", tmp_path / "home", tmp_path / "model",
                                      QT_QPA_PLATFORM="offscreen",
                                      BERTDESK_HOME=str(tmp_path / "home"))
    assert shown == []
    assert loaded == ["keras", "torch"] and task == "classify"


def test_keras_imported_lean_from_several_threads_at_once():
    """The desktop app loads models in a thread pool: every thread gets the
    whole Keras module (one imports it, the others wait), without JAX."""
    code = (
        "import json, sys, threading\n"
        "from bertdesk.lean_import import import_keras_lean\n"
        "got = []\n"
        "def load():\n"
        "    keras = import_keras_lean()\n"
        "    got.append(hasattr(keras, 'Model') and hasattr(keras, 'ops'))\n"
        "threads = [threading.Thread(target=load) for _ in range(4)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "print('RESULT', json.dumps([got, [m for m in ('jax', 'sklearn') if m in sys.modules]]))\n")
    got, loaded = _run_python(code, "torch")
    assert got == [True] * 4 and loaded == []
