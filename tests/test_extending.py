"""Extending forgetscope is adding one file. Each test here adds one plug-in as a single file,
touching nothing else, and shows that everything that should pick it up does:

- a training mitigation (`mitigate/training/`): its setting becomes a `TrainSettings` field,
  a sweep grid axis, a record label, a part of point ids, a `train` option and a curve label;
- a post-hoc mitigation (`mitigate/methods/`): its options become `MitigationSettings` fields
  (so `mitigate` options), `mitigate` measures its settings, and its rows carry its label;
- a grid axis: a field of a `Settings` class marked `{"axis": TAG}`.

Law forms, evaluators and transforms have theirs beside their own tests (`test_laws.py`,
`test_sweep.py`, `test_conjugate_transforms.py`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import yaml

from sweep_helpers import tiny_sweep_config

ANCHOR = '''
"""An anchor: pull the trainable parameters toward where they started (EWC with a flat Fisher)."""
from pydantic.fields import FieldInfo

from forgetscope.extensions import TRAINING_MITIGATIONS


class Anchor:
    name, tag, order, needs_replay = "anchor_weight", "anchor", 30, False
    field = FieldInfo.from_field(0.0, ge=0.0, description="Weight of a pull of the trained parameters toward their start.")

    def describe(self, value):
        return f"anchor {value:g}"

    def apply(self, value, run):
        start = {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}

        def pull(model):
            return value * sum(((p - start[n]) ** 2).sum() for n, p in model.named_parameters() if n in start)

        run.loss_terms.append(pull)


TRAINING_MITIGATIONS.register(Anchor.name, Anchor())
'''

# In a fresh interpreter: the settings are built, once, from the plug-ins present when
# `forgetscope.settings` is first imported, as they are for an installed plug-in.
DRIVER = '''
import json, sys
import forgetscope.mitigate.training as package
package.__path__.append(sys.argv[1])

from forgetscope.mitigate.tradeoff import training_curves
from forgetscope.settings import TrainSettings
from forgetscope.sweep.config import load_config
from forgetscope.sweep.run import run_sweep
from typer.testing import CliRunner
from forgetscope.cli import app

config = load_config(sys.argv[2])
result = run_sweep(config, sys.argv[3], progress=False)
help_text = CliRunner().invoke(app, ["train", "--help"]).output
print(json.dumps({
    "field": TrainSettings.model_fields["anchor_weight"].description,
    "points": [p.point_id for p in result.points],
    "records": result.records,
    "curves": sorted(training_curves(result.records)),
    "option": "--anchor-weight" in help_text,
}))
'''


def test_a_training_mitigation_is_one_file_that_settings_sweeps_records_and_the_cli_pick_up(llama_dir, eval_files, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "anchor.py").write_text(ANCHOR)
    config = tiny_sweep_config(llama_dir, eval_files, grid={"rank": [2], "target_modules": [["q_proj"]], "learning_rate": [0.05],
                                                                  "anchor_weight": [0.0, 1000.0]}, steps=8, eval_points=2)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(DRIVER), str(plugins), str(tmp_path / "sweep.yaml"), str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])

    assert seen["field"].startswith("Weight of a pull")
    plain, anchored = seen["points"]
    assert "-anchor" not in plain and "-anchor1000-" in anchored  # in the id only when used: old ids stay
    assert {r["anchor_weight"] for r in seen["records"]} == {0.0, 1000.0}  # a record label
    assert seen["curves"] == ["anchor 1000", "no mitigation"]  # its own words on the trade-off plot
    assert seen["option"]  # forgetscope train --anchor-weight
    last = {r["point_id"]: r for r in seen["records"] if r["step"] == 8}
    assert last[anchored]["kl"] < last[plain]["kl"]  # and it does what it says: the anchored run moves less


SHRINK = '''
"""Shrink the update by its own factors: one post-hoc method, and its option, as one file."""
import contextlib

from pydantic.fields import FieldInfo

from forgetscope.mitigate.methods import METHODS, lora_layers, restored


class Shrink:
    name, label, order, base_setting, full_setting = "shrink", "post-hoc: shrink", 90, None, 1.0
    options = {"shrink_factors": (list[float], FieldInfo.from_field([0.5, 1.0], description="Factors of B to measure."))}
    measures = "shrink_factors"

    def prepare(self, finetuned, base, options):
        if base is not None:
            return "shrink needs a LoRA adapter"
        return _Shrunk(finetuned, options.shrink_factors)


class _Shrunk:
    def __init__(self, model, settings):
        self.model, self.settings = model, settings
        self.weights = [layer.lora_B[a].weight for _, layer, a in lora_layers(model)]

    @contextlib.contextmanager
    def applied(self, setting):
        import torch

        with restored(self.weights), torch.no_grad():
            for w in self.weights:
                w.mul_(setting)
            yield

    def is_base(self, setting):
        return False

    def describe(self, setting):
        return {}

    def save(self, setting, directory):
        with self.applied(setting):
            self.model.save_pretrained(directory)


METHODS.register("shrink", Shrink())
'''

# In a fresh interpreter, as for the training mitigation: the method's option is a field of
# `MitigationSettings` (so a `mitigate` option) from the first import of the settings.
POSTHOC_DRIVER = '''
import json, sys
import forgetscope.mitigate.methods as package
package.__path__.append(sys.argv[1])

import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from forgetscope.cli import app
from forgetscope.mitigate.posthoc import mitigation_grid
from forgetscope.mitigate.tradeoff import posthoc_curves
from forgetscope.settings import LoraSettings, MitigationSettings

torch.manual_seed(0)
model = get_peft_model(AutoModelForCausalLM.from_pretrained(sys.argv[2]), LoraSettings(rank=2).to_peft())
for name, param in model.named_parameters():
    if "lora_B" in name:
        torch.nn.init.normal_(param, std=0.5)  # an update that forgets
ids = AutoTokenizer.from_pretrained(sys.argv[2])(open(sys.argv[3]).read())["input_ids"][: 4 * 32]
blocks = torch.tensor(ids).view(4, 32)
settings = MitigationSettings(scales=[0.0, 1.0], intruder_scales=[], shrink_factors=[0.25, 1.0])
grid = mitigation_grid(model, {"scripture": blocks}, blocks, settings, progress=False)
print(json.dumps({"rows": [[r["method"], r["setting"], r["kl"]] for r in grid.rows],
                  "curves": sorted(posthoc_curves(grid.to_dict())),
                  "option": "--shrink-factors" in CliRunner().invoke(app, ["mitigate", "--help"]).output}))
'''


def test_a_post_hoc_method_is_one_file_whose_option_mitigate_takes(llama_dir, eval_files, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "shrink.py").write_text(SHRINK)
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(POSTHOC_DRIVER), str(plugins), str(llama_dir), str(eval_files[0])],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    rows = {(method, setting): kl for method, setting, kl in seen["rows"]}
    assert {("shrink", 0.25), ("shrink", 1.0)} <= set(rows)  # its settings, from its own option
    assert rows[("shrink", 1.0)] == rows[("scale", 1.0)]  # its full setting is the fine-tune
    assert rows[("shrink", 0.25)] < rows[("shrink", 1.0)]
    assert "post-hoc: shrink" in seen["curves"] and seen["option"]


def test_a_grid_axis_is_a_settings_field_marked_as_one(monkeypatch):
    """Marking a setting as an axis is all it takes: the grid offers it, points carry it, and
    ids name it only when set, so every existing id stays as it was. (`dropout` marked here,
    as `settings.py` would mark it.)"""
    from pydantic import create_model

    import forgetscope.settings as settings
    import forgetscope.sweep.grid as grid  # imported before anything is patched: its names are restored after

    with_dropout = create_model("LoraSettings", __base__=settings.LoraSettings,
                                dropout=(float, settings.LoraSettings.field("dropout", json_schema_extra={"axis": "do"})))
    axes = {"dropout": with_dropout, **settings.grid_axes()}
    monkeypatch.setattr(grid, "grid_axes", lambda: axes)
    monkeypatch.setattr(grid, "axis_tag", lambda name: "do" if name == "dropout" else settings.axis_tag(name))
    monkeypatch.setattr(grid, "LoraSettings", with_dropout)
    plain = grid.Point.of(rank=4)
    dropped = grid.Point.of(rank=4, dropout=0.1)
    assert plain.point_id == grid.Point.of(rank=4, dropout=0.0).point_id  # the default leaves the id alone
    assert "-do0.1-" in dropped.point_id and dropped.lora().dropout == 0.1


def test_a_suite_is_one_lm_eval_group_file_that_eval_resolves(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    import forgetscope.downstream.evaluate as evaluate
    from forgetscope.settings import EvalSettings

    (tmp_path / "prose.yaml").write_text("group: prose\ntask:\n  - fs_docs_cloze\n  - fs_scripture_cloze\n")
    monkeypatch.setattr(evaluate, "SUITE_FOLDERS", [*evaluate.SUITE_FOLDERS, tmp_path])
    assert evaluate.resolve_tasks("prose") == ["fs_docs_cloze", "fs_scripture_cloze"]
    tasks = evaluate.prepare_tasks(EvalSettings(suite="prose", limit=2), cache_dir=tmp_path / "cache")
    assert tasks.harness == ["fs_docs_cloze", "fs_scripture_cloze"]
    # and each file is a group lm-eval itself reads, shipped ones included
    manager = TaskManager(include_path=[str(folder) for folder in evaluate.SUITE_FOLDERS], include_defaults=False)
    assert {"knowledge", "reasoning", "safety", "tiny", "prose"} <= set(manager.all_groups)
