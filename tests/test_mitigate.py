"""Mitigation: post-hoc edits of a fine-tune (update scaling, WiSE-FT, intruder dimensions),
the training mitigations (replay, KL penalty, L2 pull), and the `mitigate` command."""

from __future__ import annotations

import inspect
import json
import json as json_module

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from cli_helpers import assert_user_error, run_cli
from forgetscope.base_cache import BaseSource, final_hidden, record_base_predictions
from forgetscope.data import check_no_overlap, group_into_blocks, load_eval_blocks
from forgetscope.errors import UserInputError
from forgetscope.metric import mean_loss, measure_forgetting
from forgetscope.mitigate.methods.intruder import find_intruders
from forgetscope.mitigate.posthoc import choose, mitigation_grid
from forgetscope.mitigate.tradeoff import best_gain_within, kl_at_gain
from forgetscope.mitigate.training.l2 import l2_of_update
from forgetscope.mitigate.training.replay import with_replay
from forgetscope.settings import LoraSettings, MitigationSettings, TrainSettings
from forgetscope.train import finetune
from sweep_helpers import tiny_sweep_config, write_config

SEQ_LEN = 32


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def eval_blocks(eval_files, tok):
    return load_eval_blocks(eval_files, tok, SEQ_LEN, max_tokens=256)


@pytest.fixture(scope="module")
def code_blocks(tok):
    return group_into_blocks([inspect.getsource(json_module.decoder), inspect.getsource(json_module.encoder)], tok, SEQ_LEN)


def random_adapter(base_dir, seed: int = 3):
    """A LoRA fine-tune with non-zero B: forgetting without training."""
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def adapter_dir(llama_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter")
    random_adapter(llama_dir).save_pretrained(path)
    return path


def loaded(llama_dir, adapter_dir):
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), adapter_dir).eval()


# -- post-hoc ---------------------------------------------------------------------------------


def test_scale_zero_is_the_base_exactly_and_one_the_adapter_exactly(llama_dir, adapter_dir, eval_blocks, code_blocks):
    model = loaded(llama_dir, adapter_dir)
    grid = mitigation_grid(model, eval_blocks, code_blocks, MitigationSettings(scales=[0.0, 0.5, 1.0], intruder_scales=[]), n_bootstrap=0)
    rows = {r["setting"]: r for r in grid.rows}
    assert rows[0.0]["kl"] == 0.0
    with model.disable_adapter():
        assert rows[0.0]["ft_loss"] == mean_loss(model, code_blocks) == grid.base_ft_loss
        base_hidden = final_hidden(model, code_blocks[:4])
    with grid.edits["scale"].applied(0.0):  # so scale 0 may reuse the base's recorded pass: it is the base, bit for bit
        assert torch.equal(final_hidden(model, code_blocks[:4]), base_hidden)
    recorded = BaseSource("recorded", predictions=record_base_predictions(model, eval_blocks))
    own = measure_forgetting(model, eval_blocks, recorded, batch_size=16, n_bootstrap=0).overall
    assert rows[1.0]["kl"] == own["kl"] and rows[1.0]["forgetting_ce"] == own["forgetting_ce"]
    assert rows[1.0]["ft_loss"] == mean_loss(model, code_blocks)
    assert 0 < rows[0.5]["kl"] < rows[1.0]["kl"]
    # the grid leaves the model as it found it
    assert measure_forgetting(model, eval_blocks, recorded, batch_size=16, n_bootstrap=0).overall["kl"] == own["kl"]


def test_wise_ft_interpolates_a_full_fine_tune_between_its_ends(llama_dir, adapter_dir, eval_blocks, code_blocks):
    base = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    merged = loaded(llama_dir, adapter_dir).merge_and_unload().eval()
    grid = mitigation_grid(merged, eval_blocks, code_blocks, MitigationSettings(scales=[0.0, 0.5, 1.0], intruder_scales=[0.0]),
                           base=base, n_bootstrap=0)
    rows = {r["setting"]: r for r in grid.rows}
    assert "intruder" in grid.skipped and set(rows) == {0.0, 0.5, 1.0}
    assert rows[0.0]["kl"] == 0.0 and rows[0.0]["ft_loss"] == mean_loss(base, code_blocks)
    fine_tuned = {name: p.clone() for name, p in merged.state_dict().items()}

    def as_used(model, name):  # a weight as its module reads it (through the interpolation)
        owner, _, attr = name.rpartition(".")
        return getattr(model.get_submodule(owner), attr)

    with grid.edits["scale"].applied(0.0):
        assert all(torch.equal(as_used(merged, name), p) for name, p in base.state_dict().items())
    assert all(torch.equal(p, fine_tuned[name]) for name, p in merged.state_dict().items())  # back exactly
    reference = measure_forgetting(merged, eval_blocks, base=base, batch_size=16, n_bootstrap=0).overall  # two models
    assert rows[1.0]["kl"] == pytest.approx(reference["kl"], rel=1e-5)
    assert 0 < rows[0.5]["kl"] < rows[1.0]["kl"]


def test_an_intruder_dimension_is_a_new_top_direction_unlike_any_of_the_base():
    base = torch.diag(torch.linspace(1.0, 0.1, 16))  # its singular vectors are the axes
    new = torch.full((16,), 0.25)  # |cos| 0.25 with every axis
    spike = 5.0 * torch.outer(new, torch.eye(16)[2])
    left, right = find_intruders(base, base + spike, threshold=0.5, top_k=3)
    correction = left @ right
    assert len(right) == 1
    assert torch.linalg.matrix_rank(correction) == 1
    assert float(torch.linalg.matrix_norm(correction, ord=2)) == pytest.approx(float(torch.linalg.matrix_norm(base + spike, ord=2)))
    assert len(find_intruders(base, base + spike - correction.float(), threshold=0.5, top_k=3)[1]) == 0  # scaled to 0: gone
    assert len(find_intruders(base, base + spike, threshold=0.2, top_k=3)[1]) == 0  # 0.25 is not below 0.2
    assert len(find_intruders(base, base * 1.01, threshold=0.9, top_k=5)[1]) == 0  # the same directions, none new


@pytest.mark.parametrize("settings", [MitigationSettings(scales=[0.25], intruder_scales=[]),
                                      MitigationSettings(scales=[], intruder_scales=[0.0], intruder_threshold=0.9)])
def test_a_saved_mitigated_adapter_loads_with_plain_peft_and_reproduces_its_kl(settings, llama_dir, adapter_dir, eval_blocks, code_blocks, tmp_path):
    model = loaded(llama_dir, adapter_dir)
    grid = mitigation_grid(model, eval_blocks, code_blocks, settings, n_bootstrap=0)
    row = grid.rows[0]
    if row["method"] == "intruder":
        assert row["intruders"] > 0  # the random update is all new directions
    grid.save(row, tmp_path / "saved")
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), tmp_path / "saved").eval()
    kl = measure_forgetting(again, eval_blocks, batch_size=16, n_bootstrap=0).overall["kl"]
    assert kl == pytest.approx(row["kl"], rel=1e-4)
    assert kl > 0


def test_the_budget_picks_the_lowest_fine_tuning_loss_within_it():
    rows = [{"method": "scale", "setting": s, "kl": k, "ft_loss": f} for s, k, f in [(0, 0, 3.0), (0.5, 0.1, 2.5), (1, 0.3, 2.0)]]
    assert choose(rows, 0.2)["setting"] == 0.5
    assert choose(rows, 1.0)["setting"] == 1
    assert choose(rows, -1) is None


def test_trade_off_curves_answer_kl_at_a_gain_and_gain_within_a_budget():
    curve = [{"gain": 0.0, "kl": 0.0}, {"gain": 0.1, "kl": 0.02}, {"gain": 0.2, "kl": 0.06}]
    assert kl_at_gain([curve], 0.15) == pytest.approx(0.04)
    assert kl_at_gain([curve], 0.3) is None
    assert best_gain_within([curve], 0.04) == pytest.approx(0.15)
    assert best_gain_within([curve, [{"gain": 0.25, "kl": 0.03}]], 0.04) == 0.25


def test_mitigate_cli_prints_rows_writes_the_plot_and_saves_within_budget(llama_dir, adapter_dir, eval_files, tmp_path, capsys):
    out = tmp_path / "m.json"
    code, stdout, err = run_cli(["mitigate", "--base", llama_dir, "--adapter", adapter_dir, "--eval-data", eval_files[0],
                                 "--ft-eval-data", eval_files[1], "--seq-len", SEQ_LEN, "--max-tokens", 256, "--scales", "0,0.5,1",
                                 "--intruder-scales", "0", "--budget", "1e9", "--save", tmp_path / "chosen", "--out", out, "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert [(r["method"], r["setting"]) for r in result["rows"] if r["method"] == "scale"] == [("scale", 0.0), ("scale", 0.5), ("scale", 1.0)]
    assert any(r["method"] == "intruder" for r in result["rows"])
    assert result["chosen"]["ft_loss"] == min(r["ft_loss"] for r in result["rows"])
    assert (tmp_path / "chosen" / "adapter_config.json").is_file() and (tmp_path / "m.png").stat().st_size > 10_000
    assert json.loads(out.read_text())["rows"] == result["rows"]


@pytest.mark.parametrize("extra, fragment", [
    (["--scales", "0,1.5"], "--scales: Input should be less than or equal to 1"),
    (["--scales", "half"], "--scales"),
    (["--intruder-scales", "-0.1"], "--intruder-scales: Input should be greater than or equal to 0"),
    (["--save", "x"], "--budget"),
])
def test_mitigate_bad_settings_are_one_line_errors(extra, fragment, llama_dir, adapter_dir, eval_files, capsys):
    code, _, err = run_cli(["mitigate", "--base", llama_dir, "--adapter", adapter_dir, "--eval-data", eval_files[0],
                            "--ft-eval-data", eval_files[1], *extra], capsys)
    assert_user_error(code, err, fragment)


def test_mitigate_needs_a_base_and_an_adapter(llama_dir, eval_files, tmp_path, capsys):
    data = ["--eval-data", eval_files[0], "--ft-eval-data", eval_files[1]]
    assert_user_error(*run_cli(["mitigate", "--base", llama_dir, *data], capsys)[::2], "--adapter")
    assert_user_error(*run_cli(["mitigate", "--adapter", tmp_path, *data], capsys)[::2], "--base")
    assert_user_error(*run_cli(["mitigate", "--base", llama_dir, "--adapter", tmp_path, *data], capsys)[::2], "adapter not found")


# -- during training ----------------------------------------------------------------------------


def train(llama_dir, tok, code_blocks, eval_blocks, replay=None, **settings):
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    run = TrainSettings(steps=12, learning_rate=1e-2, batch_size=4, seq_len=SEQ_LEN, eval_points=4, **settings)
    return finetune(model, tok, LoraSettings(rank=4, lora_alpha=8), run, code_blocks[:-4], eval_blocks, code_blocks[-4:],
                    progress=False, replay_blocks=replay)


@pytest.fixture(scope="module")
def replay_blocks(tok):
    """Pretraining-like text that is not the eval text: other Python modules' source."""
    import csv
    import textwrap

    return group_into_blocks([inspect.getsource(csv), inspect.getsource(textwrap)], tok, SEQ_LEN)


@pytest.fixture(scope="module")
def plain_run(llama_dir, tok, code_blocks, eval_blocks):
    return train(llama_dir, tok, code_blocks, eval_blocks)


def test_zero_weights_give_records_identical_to_plain_training(plain_run, llama_dir, tok, code_blocks, eval_blocks, replay_blocks):
    zero = train(llama_dir, tok, code_blocks, eval_blocks, replay_blocks, replay_fraction=0.0, kl_weight=0.0, l2_weight=0.0)
    assert zero == plain_run


def test_a_kl_penalty_toward_the_base_forgets_less(plain_run, llama_dir, tok, code_blocks, eval_blocks, replay_blocks):
    penalised = train(llama_dir, tok, code_blocks, eval_blocks, replay_blocks, kl_weight=20.0)
    assert penalised[-1]["kl"] < 0.7 * plain_run[-1]["kl"]


def test_an_l2_pull_keeps_the_update_small(plain_run, llama_dir, tok, code_blocks, eval_blocks):
    pulled = train(llama_dir, tok, code_blocks, eval_blocks, l2_weight=10.0)
    assert pulled[-1]["kl"] < plain_run[-1]["kl"]


def test_the_l2_of_the_update_is_the_squared_norm_of_s_b_a(llama_dir):
    model = random_adapter(llama_dir)
    from forgetscope.mitigate.methods import lora_layers

    expected = sum(float(layer.get_delta_weight(a).detach().pow(2).sum()) for _, layer, a in lora_layers(model))
    assert float(l2_of_update(model).detach()) == pytest.approx(expected, rel=1e-4)


def test_replay_makes_that_share_of_the_training_sequences(code_blocks, replay_blocks):
    mixed = with_replay(code_blocks, replay_blocks[:3], 0.2, seed=0)
    n_replay = len(mixed) - len(code_blocks)
    assert n_replay / len(mixed) == pytest.approx(0.2, abs=1 / len(mixed))
    assert torch.equal(mixed[: len(code_blocks)], code_blocks)
    replayed = {tuple(row.tolist()) for row in mixed[len(code_blocks):]}
    assert replayed <= {tuple(row.tolist()) for row in replay_blocks[:3]}  # a short corpus is repeated


def test_replay_that_overlaps_the_eval_text_is_refused(llama_dir, tok, code_blocks, eval_blocks, replay_blocks):
    leaked = torch.cat([replay_blocks, next(iter(eval_blocks.values()))[:1]])
    with pytest.raises(UserInputError, match="overlaps eval domain"):
        train(llama_dir, tok, code_blocks, eval_blocks, leaked, replay_fraction=0.05)
    check_no_overlap(replay_blocks, eval_blocks)  # separate text passes


@pytest.mark.parametrize("extra, fragment", [
    (["--replay-fraction", "1.0", "--replay-data", "{eval}"], "--replay-fraction"),
    (["--replay-fraction", "-0.1", "--replay-data", "{eval}"], "--replay-fraction"),
    (["--replay-fraction", "0.1"], "--replay-data"),
    (["--kl-weight", "1", "--replay-data", "missing.txt"], "missing.txt"),
    (["--replay-fraction", "0.1", "--replay-data", "{eval}"], "overlaps"),
])
def test_train_cli_refuses_bad_replay_settings(extra, fragment, llama_dir, eval_files, tmp_path, capsys):
    extra = [str(eval_files[0]) if e == "{eval}" else e for e in extra]
    code, _, err = run_cli(["train", "--base", llama_dir, "--train-data", eval_files[1], "--eval-data", eval_files[0],
                            "--out", tmp_path / "run", "--steps", 2, "--seq-len", SEQ_LEN, "--eval-tokens", 128, *extra], capsys)
    assert_user_error(code, err, fragment)


# -- in sweeps ----------------------------------------------------------------------------------


def test_an_unmitigated_point_keeps_the_id_it_had_before_mitigations_existed():
    import hashlib

    from forgetscope.sweep.grid import Point

    old_fields = {"rank": 4, "target_modules": "all-linear", "layers": None, "rslora": True, "lora_alpha": 16.0,
                  "learning_rate": 1e-3, "seed": 0}
    point = Point.of(**old_fields)
    assert point.point_id == "r4-all-rs-s0-" + hashlib.sha256(json.dumps(old_fields, sort_keys=True).encode()).hexdigest()[:8]
    replayed = Point.of(**old_fields, replay_fraction=0.01)
    assert replayed.point_id.startswith("r4-all-rs-s0-replay0.01-") and replayed.point_id != point.point_id


def test_a_grid_with_replay_needs_a_replay_corpus(llama_dir, eval_files):
    from forgetscope.sweep.config import parse_config

    config = tiny_sweep_config(llama_dir, eval_files, grid={"rank": [1], "replay_fraction": [0.0, 0.05]})
    with pytest.raises(UserInputError, match="replay_data"):
        parse_config(config)
    with pytest.raises(UserInputError, match="replay_fraction"):
        parse_config(tiny_sweep_config(llama_dir, eval_files, grid={"replay_fraction": [1.0]}))


def test_a_sweep_with_mitigations_keeps_adapters_for_mitigate(llama_dir, eval_files, tmp_path, capsys, monkeypatch):
    import csv

    replay = tmp_path / "replay.txt"
    replay.write_text(inspect.getsource(csv))
    grid = [{"rank": [1, 4], "target_modules": [["q_proj"]], "learning_rate": [0.01]},
            {"rank": [4], "target_modules": [["q_proj"]], "learning_rate": [0.01], "replay_fraction": [0.2], "kl_weight": [1.0]}]
    config = write_config(tmp_path / "sweep.yaml", tiny_sweep_config(llama_dir, eval_files, grid=grid, steps=4, save_adapters=True,
                                                                     replay_data=[{"files": [str(replay)]}]))
    code, _, err = run_cli(["sweep", config, "--out", tmp_path / "sw"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "sw" / "records.jsonl").read_text().splitlines()]
    assert {r.get("replay_fraction") for r in records} == {0.0, 0.2}
    assert len(list((tmp_path / "sw" / "adapters").iterdir())) == 3
    assert (tmp_path / "sw" / "heldout.safetensors").is_file()

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("mitigate --sweep read the kept held-out text: nothing is tokenized again")

    monkeypatch.setattr("forgetscope.sweep.prepare.prepare", no_tokenizing)
    code, stdout, err = run_cli(["mitigate", "--sweep", tmp_path / "sw", "--scales", "0,1", "--intruder-scales", "none", "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    largest = max((r for r in records if not r["replay_fraction"]), key=lambda r: (r["trainable_params"], r["step"]))
    assert result["source"]["point_id"] == largest["point_id"]
    full = next(r for r in result["rows"] if r["setting"] == 1.0)
    assert full["kl"] == pytest.approx(largest["kl"], rel=1e-5)  # the same text, the same adapter
    assert (tmp_path / "sw" / "mitigation" / f"{largest['point_id']}.json").is_file()
    code, _, err = run_cli(["report", tmp_path / "sw"], capsys)  # the trade-off of both kinds, laws or not
    assert code == 0, err
    page = (tmp_path / "sw" / "report.html").read_text()
    assert "Mitigation: what each option trades" in page and "post-hoc: update scale" in page and "replay 20% + KL penalty 1" in page
    assert (tmp_path / "sw" / "tradeoff.png").stat().st_size > 10_000


@pytest.mark.parametrize("threshold", [0.5, 0.9])
def test_the_intruders_found_are_the_ones_peft_finds(llama_dir, adapter_dir, threshold):
    """PEFT's own `reduce_intruder_dimension` runs the same test (in float32): it finds the same
    intruders in the same layers. It then truncates the edit to rank r, which forgetscope does not."""
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    from forgetscope.mitigate.methods.intruder import IntruderMethod

    model = loaded(llama_dir, adapter_dir)
    options = MitigationSettings(intruder_scales=[0.0], intruder_threshold=threshold, intruder_top_k=10)
    ours = {layer.name: layer.intruders for layer in IntruderMethod().prepare(model, None, options).layers}
    said: list[str] = []
    reduce_intruder_dimension(model, top_k=10, threshold_epsilon=threshold, logging_sink=said.append)
    theirs = {line.split(":")[0].removeprefix("base_model.model."): int(line.rsplit(" ", 1)[1]) for line in said if "Intruders:" in line}
    assert ours and ours == theirs
