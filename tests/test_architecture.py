"""The package's shape: no import points back up the layers of `scripts/import_graph.py`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "import_graph.py"


def load_script():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_module_imports_back_up_the_layers():
    run = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
    assert run.stdout.strip().endswith("0 pointing back up")


def test_the_check_sees_a_backward_import_and_a_cycle():
    graph = load_script()
    edges = {"forgetscope.metric": {"forgetscope.sweep.run"}, "forgetscope.sweep.run": {"forgetscope.sweep.store"},
             "forgetscope.sweep.store": {"forgetscope.sweep.run"}}
    found = graph.violations(edges)
    assert any(line.startswith("forgetscope.metric -> forgetscope.sweep.run") for line in found)
    assert any(line.startswith("cycle: ") for line in found)


def test_every_module_is_in_a_layer():
    graph = load_script()
    for module in graph.graph():
        if graph.top(module):
            graph.layer_of(module)  # raises SystemExit for a module no layer names
