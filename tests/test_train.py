"""One LoRA / rsLoRA fine-tune with live forgetting, and the callback in a plain Trainer."""

from __future__ import annotations

import json
import math

import datasets
import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments, default_data_collator

from cli_helpers import assert_user_error, run_cli
from forgetscope.callback import ForgettingCallback, log_spaced_steps
from forgetscope.data import group_into_blocks, load_eval_blocks
from forgetscope.errors import UserInputError
from forgetscope.metric import METRIC_KEYS
from forgetscope.models import count_trainable_params
from forgetscope.train import LoraSettings, TrainSettings, finetune

SEQ_LEN = 32


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def code_blocks(tok):
    """Fine-tuning text of another domain than the eval text: Python source."""
    import inspect
    import json as json_module

    return group_into_blocks([inspect.getsource(json_module.decoder), inspect.getsource(json_module.encoder)], tok, SEQ_LEN)


@pytest.fixture(scope="module")
def eval_blocks(eval_files, tok):
    return load_eval_blocks(eval_files, tok, SEQ_LEN, max_tokens=256)


@pytest.fixture(scope="module")
def run(llama_dir, tok, code_blocks, eval_blocks, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    settings = TrainSettings(steps=20, learning_rate=1e-2, batch_size=4, seq_len=SEQ_LEN, eval_points=5)
    records = finetune(model, tok, LoraSettings(rank=4, lora_alpha=8), settings, code_blocks[:-4], eval_blocks, code_blocks[-4:],
                       out, progress=False)
    return records, out


def test_log_spaced_steps_start_at_zero_and_end_at_the_budget():
    assert log_spaced_steps(1000, 6) == [0, 1, 6, 32, 178, 1000]
    assert log_spaced_steps(3, 8) == [0, 1, 2, 3]
    assert log_spaced_steps(60, 2) == [0, 60]  # two points: the start and the end, not step 1


def test_records_come_at_log_spaced_steps_with_every_field(run):
    records, _ = run
    assert [r["step"] for r in records] == log_spaced_steps(20, 5)
    for r in records:
        assert {"step", "train_loss", "ft_loss", "trainable_params", "domains", *METRIC_KEYS} <= set(r)
        assert set(r["domains"]) == {"scripture", "docs"}
    assert records[0]["train_loss"] is None and all(math.isfinite(r["train_loss"]) for r in records[1:])


def test_kl_is_exactly_zero_at_step_zero_with_peft_default_init(run):
    first = run[0][0]
    assert first["kl"] == 0.0
    assert all(d["kl"] == 0.0 for d in first["domains"].values())


def test_kl_is_never_negative_and_rises_while_fine_tuning_loss_falls(run):
    records, _ = run
    kls = [r["kl"] for r in records]
    assert all(k >= 0 for k in kls)
    assert kls[-1] > kls[1] > 0
    assert records[-1]["ft_loss"] < records[0]["ft_loss"]


def test_the_run_saves_its_adapter_records_and_settings(run):
    records, out = run
    assert (out / "adapter" / "adapter_config.json").is_file()
    on_disk = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert on_disk == records
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["use_rslora"] is True and config["r"] == 4


def test_trainable_params_count_lora_matrices_but_not_embeddings(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    peft_model = get_peft_model(model, LoraSettings(rank=2, target_modules=["q_proj"]).to_peft())
    # q_proj is 32x32 in each of 2 layers: A is 2x32, B is 32x2.
    assert count_trainable_params(peft_model) == 2 * (2 * 32 + 32 * 2)


def test_layers_restrict_which_blocks_are_adapted(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    peft_model = get_peft_model(model, LoraSettings(rank=2, target_modules=["q_proj"], layers=[1]).to_peft())
    assert count_trainable_params(peft_model) == 2 * 32 + 32 * 2


def test_rslora_scales_by_alpha_over_sqrt_rank(llama_dir):
    for rslora, expected in [(True, 8 / math.sqrt(4)), (False, 8 / 4)]:
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir), LoraSettings(rank=4, lora_alpha=8, rslora=rslora).to_peft())
        q = model.base_model.model.model.layers[0].self_attn.q_proj
        assert q.scaling["default"] == pytest.approx(expected)


def test_the_callback_logs_forgetting_through_a_plain_trainer(llama_dir, code_blocks, eval_blocks, tmp_path):
    """What a user writes in their own script: their Trainer, our callback."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ids = code_blocks.tolist()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-2,
                             logging_steps=2, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=datasets.Dataset.from_dict({"input_ids": ids, "labels": ids}),
                      data_collator=default_data_collator)
    seen = []
    callback = ForgettingCallback(trainer, eval_blocks, eval_steps=[0, 3, 6], on_record=seen.append)
    trainer.add_callback(callback)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "forgetting/kl" in entry]
    assert [entry["step"] for entry in logged] == [0, 3, 6]
    assert "forgetting/scripture/kl" in logged[-1]
    assert logged[0]["forgetting/kl"] == 0.0 and logged[-1]["forgetting/kl"] > 0
    assert [r["step"] for r in seen] == [0, 3, 6] == [r["step"] for r in callback.records]
    assert seen[1]["train_loss"] is not None  # step 3 is not a logging step: the latest logged loss is used


def test_under_trl_the_callback_leaves_the_trainers_own_log_entries_as_they_are(llama_dir, tok, code_blocks, eval_blocks, tmp_path):
    """TRL's SFTTrainer.log adds the metrics it accumulates (entropy, mean_token_accuracy,
    num_tokens) to whatever entry is logged next: they must stay on its loss entries."""
    trl = pytest.importorskip("trl")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-2,
                         logging_steps=2, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
                         max_length=SEQ_LEN, dataset_text_field="text", packing=False)
    texts = [tok.decode(block) for block in code_blocks[:24]]
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_dict({"text": texts}), processing_class=tok)
    callback = ForgettingCallback(trainer, eval_blocks, eval_steps=[0, 2, 4, 6])
    trainer.add_callback(callback)
    trainer.train()
    losses = [entry for entry in trainer.state.log_history if "loss" in entry]
    forgetting = [entry for entry in trainer.state.log_history if "forgetting/kl" in entry]
    assert [e["step"] for e in losses] == [2, 4, 6] and [e["step"] for e in forgetting] == [0, 2, 4, 6]
    assert all("mean_token_accuracy" in e and "entropy" in e for e in losses)
    assert not any(key in e for e in forgetting for key in ("mean_token_accuracy", "entropy", "num_tokens", "loss"))
    assert [r["train_loss"] for r in callback.records[1:]] == [e["loss"] for e in losses]


def test_tensorboard_event_files_are_kept_under_out_runs(llama_dir, eval_files, tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    code, _, err = run_cli(["train", "--base", llama_dir, "--train-data", eval_files[1], "--eval-data", eval_files[0],
                            "--out", tmp_path / "o", "--seq-len", SEQ_LEN, "--steps", 2, "--eval-points", 2,
                            "--eval-tokens", 128, "--report-to", "tensorboard", "--json"], capsys)
    assert code == 0, err
    events = list((tmp_path / "o" / "runs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert b"train/forgetting/kl" in events[0].read_bytes()  # the tag the watch guide names


def test_the_callback_with_a_separate_base_model_matches_disable_adapter(llama_dir, eval_blocks):
    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    one_copy = ForgettingCallback(None, eval_blocks).measure(model, 0)
    two_models = ForgettingCallback(None, eval_blocks, base_model=base).measure(model, 0)
    assert one_copy["kl"] > 0
    assert one_copy["forgetting_ce"] == pytest.approx(two_models["forgetting_ce"], abs=1e-6)


@pytest.mark.parametrize(
    ("lora", "message"),
    [
        ({"rank": 0}, "`rank`: Input should be greater than or equal to 1"),
        ({"rank": -3}, "`rank`: Input should be greater than or equal to 1"),
        ({"lora_alpha": 0}, "`lora_alpha`: Input should be greater than 0"),
        ({"dropout": 1.5}, "`dropout`"),
        ({"layers": []}, "`layers`"),
        ({"target_modules": []}, "target_modules is empty"),
        ({"alpha": 8}, "`alpha`: unknown field"),
    ],
)
def test_bad_lora_settings_are_user_errors(lora, message):
    with pytest.raises(UserInputError, match=message):
        LoraSettings(**lora)


def test_target_modules_that_match_nothing_are_a_user_error(llama_dir, tok, code_blocks, eval_blocks):
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    with pytest.raises(UserInputError, match="do not fit the model"):
        finetune(model, tok, LoraSettings(target_modules=["no_such_proj"]), TrainSettings(steps=1, seq_len=SEQ_LEN),
                 code_blocks, eval_blocks, progress=False)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--rank", "0"], "--rank: Input should be greater than or equal to 1"),
        (["--target-modules", "no_such_proj"], "do not fit the model"),
        (["--layers", "one,two"], "--layers: Input should be a valid integer"),
        (["--steps", "0"], "--steps: Input should be greater than or equal to 1"),
        (["--eval-points", "1"], "--eval-points: Input should be greater than or equal to 2"),
        (["--dtype", "float16"], "--dtype: Input should be 'float32' or 'bfloat16'"),
        (["--batch-size", "8", "--micro-batch-size", "3"], "batch_size 8 is not a multiple of micro_batch_size 3"),
        (["--trainer-args", "max_steps=5"], "max_steps is set by forgetscope's own setting steps"),
        (["--trainer-args", "no_such_field=1"], "'no_such_field' is not a TrainingArguments field"),
        (["--trainer-args", "weight_decay=heavy"], "weight_decay"),
        (["--trainer-args", "weight_decay"], "--trainer-args takes KEY=VALUE pairs"),
    ],
)
def test_train_cli_bad_input_is_one_line_and_exit_2(extra, fragment, llama_dir, eval_files, tmp_path, capsys):
    code, _, err = run_cli(["train", "--base", llama_dir, "--train-data", eval_files[1], "--eval-data", eval_files[0],
                            "--out", tmp_path / "o", "--seq-len", SEQ_LEN, *extra], capsys)
    assert_user_error(code, err, fragment)


def test_train_cli_runs_and_prints_json_records(llama_dir, eval_files, tmp_path, capsys):
    code, out, err = run_cli(["train", "--base", llama_dir, "--train-data", eval_files[1], "--eval-data", eval_files[0],
                              "--out", tmp_path / "o", "--seq-len", SEQ_LEN, "--steps", 4, "--eval-points", 3,
                              "--eval-tokens", 128, "--device", "cpu", "--no-rslora", "--alpha", 8, "--json"], capsys)
    assert code == 0, err
    records = json.loads(out)
    assert [r["step"] for r in records] == [0, 1, 4]
    assert (tmp_path / "o" / "adapter" / "adapter_config.json").is_file()
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["lora"]["lora_alpha"] == 8 and run["lora"]["rslora"] is False  # --alpha is --lora-alpha


def test_dense_late_steps_see_the_start_and_put_most_points_past_a_fifth_of_the_run():
    from forgetscope.callback import dense_late_steps

    steps = dense_late_steps(100, 13)
    assert steps[0] == 0 and steps[-1] == 100 and len(steps) == 13 and steps == sorted(set(steps))
    assert sum(s >= 20 for s in steps) >= 8 and steps[1] == 1


@pytest.mark.slow
def test_a_kl_budget_forecasts_the_last_step_and_stops_the_run_once_crossed(llama_dir, tok, code_blocks, eval_blocks, tmp_path):
    def run(budget: float, stop: str, out):
        settings = TrainSettings(steps=40, learning_rate=1e-2, batch_size=4, seq_len=SEQ_LEN, eval_points=10,
                                 eval_schedule="dense-late", kl_budget=budget, stop_on_budget=stop)
        return finetune(AutoModelForCausalLM.from_pretrained(llama_dir), tok, LoraSettings(rank=4, lora_alpha=8), settings,
                        code_blocks[:-4], eval_blocks, code_blocks[-4:], out, progress=False)

    watched = run(1.0, "never", tmp_path / "watched")
    steps = [r["step"] for r in watched]
    assert steps == [0, 1, 3, 8, 13, 19, 24, 29, 35, 40]  # dense-late, and never stopped
    forecasts = [r["forecast"] for r in watched if "forecast" in r]  # from the third trained measurement on
    assert len(forecasts) == 6 and all(f["low"] <= f["kl"] <= f["high"] and f["planned_steps"] == 40 for f in forecasts)
    budget = max(r["kl"] for r in watched[:6]) * 1.0001
    crossing = next(i for i, r in enumerate(watched) if r["kl"] > budget)
    stopped = run(budget, "measured", tmp_path / "stopped")
    assert [r["step"] for r in stopped] == steps[: crossing + 1]  # the same run, up to the first crossing
    run_json = json.loads((tmp_path / "stopped" / "run.json").read_text())
    assert "exceeded the budget" in run_json["stopped_by_budget"] and f"step {steps[crossing]}" in run_json["stopped_by_budget"]


def test_the_in_run_forecast_extrapolates_a_power_law_exactly():
    from forgetscope.laws.forecast import forecast_run

    steps = [0, 1, 4, 10, 25]
    forecast = forecast_run(steps, [0.0, *(0.002 * s**0.8 for s in steps[1:])], planned_steps=100, budget=0.05)
    assert forecast["kl"] == pytest.approx(0.002 * 100**0.8, rel=1e-9)
    assert forecast["budget_step"] == pytest.approx((0.05 / 0.002) ** (1 / 0.8), rel=1e-9)
    assert forecast_run([0, 1, 2], [0, 0.1, 0.2], 100) is None  # two trained points: too few


def test_with_a_sweeps_law_as_prior_the_in_run_forecast_follows_the_laws_bend_at_the_runs_level(tmp_path):
    from forgetscope.laws.forecast import Query, forecast_run, run_prior
    from forgetscope.laws.select import fit_sweep
    from law_helpers import ARMS, write_sweep

    fits = fit_sweep(write_sweep(tmp_path / "s", noise=0.0, arms=("all-linear",)), n_bootstrap=0, transfer_slope=0.0,
                     kl_law="select")  # a law that held: the known one
    P = 8 * ARMS["all-linear"][1]
    prior = run_prior(fits, Query(P=P, arm="all-linear", extrapolate=True))
    steps = [0, 1, 4, 10, 20, 33, 47]
    this_run = [0.0, *(1.7 * prior.kl(s) for s in steps[1:])]  # this run forgets 1.7x what the sweep's law says
    forecast = forecast_run(steps, this_run, planned_steps=200, prior=prior)
    alone = forecast_run(steps, this_run, planned_steps=200)
    truth = 1.7 * float(prior.kl(200))
    assert forecast["prior"] and forecast["low"] < truth < forecast["high"]
    assert abs(forecast["kl"] - truth) < abs(alone["kl"] - truth)  # the law knows the curve bends; a power law does not
    assert forecast["kl"] == pytest.approx(truth, rel=0.1)
    # A run whose first steps climb faster than the law (the transient) keeps the law's slope
    # ahead: only its level is its own.
    steep = [0.0, *(1.7 * prior.kl(s) * (s / 47) ** 0.5 for s in steps[1:])]
    forecast = forecast_run(steps, steep, planned_steps=200, prior=prior)
    kept = [s for s in steps if s >= math.sqrt(47)]  # the latest half of the measurements in log N
    level = math.exp(sum(math.log(1.7 * (s / 47) ** 0.5) for s in kept) / len(kept))
    assert forecast["kl"] == pytest.approx(level * float(prior.kl(200)), rel=1e-9)


def test_with_a_prior_the_in_run_forecast_slows_only_past_the_sweeps_steps_as_predict_does(tmp_path):
    from forgetscope.laws.forecast import Query, forecast_run, run_prior
    from forgetscope.laws.select import fit_sweep
    from law_helpers import ARMS, write_sweep

    fits = fit_sweep(write_sweep(tmp_path / "s", noise=0.05, arms=("all-linear",)), n_bootstrap=0)  # the averaged law
    anchor = fits["kl"]["anchor"]
    alone = {**fits, "kl": {**fits["kl"], "anchor": {k: v for k, v in anchor.items() if k != "saturation"}}}
    query = Query(P=8 * ARMS["all-linear"][1], arm="all-linear", extrapolate=True)
    prior, law_only = run_prior(fits, query), run_prior(alone, query)
    end = prior.slows_after()
    assert end == pytest.approx(anchor["saturation"]["after"][0]) and law_only.slows_after() == float("inf")
    steps = [0, 1, 4, 10, 20]
    run = [0.0, *(1.3 * float(prior.kl(s)) for s in steps[1:])]
    within = forecast_run(steps, run, planned_steps=int(end), prior=prior)
    assert within["kl"] == pytest.approx(forecast_run(steps, run, planned_steps=int(end), prior=law_only)["kl"])
    beyond, unslowed = (forecast_run(steps, run, planned_steps=int(8 * end), prior=p)["kl"] for p in (prior, law_only))
    assert beyond != pytest.approx(unslowed)


def test_the_in_run_interval_with_a_prior_holds_how_uncertain_the_laws_growth_ahead_is(tmp_path):
    # As `predict` widens its intervals by the law's bootstrap band, the in-run forecast widens
    # by the spread of the resamples' growth from the last measurement to the planned step.
    from forgetscope.laws.forecast import Query, forecast_run, run_prior
    from forgetscope.laws.select import fit_sweep
    from law_helpers import ARMS, write_sweep

    fits = fit_sweep(write_sweep(tmp_path / "s", noise=0.1, arms=("all-linear",)), n_bootstrap=100, transfer_slope=0.0, kl_law="select")
    query = Query(P=8 * ARMS["all-linear"][1], arm="all-linear", extrapolate=True)
    prior = run_prior(fits, query)
    spread = prior.growth_sd(20, 400)
    assert spread > 0 and prior.growth_sd(20, 20) == 0.0
    without = run_prior({**fits, "kl": {**fits["kl"], "bootstrap": []}}, query)
    assert without.growth_sd(20, 400) == 0.0
    steps = [0, 1, 4, 10, 20]
    run = [0.0, *(float(prior.kl(s)) for s in steps[1:])]
    wide, narrow = (forecast_run(steps, run, planned_steps=400, prior=p) for p in (prior, without))
    assert wide["kl"] == pytest.approx(narrow["kl"])
    assert wide["high"] / wide["low"] > narrow["high"] / narrow["low"]


@pytest.mark.slow
def test_train_law_gives_the_callback_the_sweeps_law_and_every_forecast_uses_it(llama_dir, eval_files, tmp_path, capsys):
    from forgetscope.laws.select import fit_sweep
    from law_helpers import write_sweep

    sweep = write_sweep(tmp_path / "sweep", arms=("all-linear",))
    fit_sweep(sweep, n_bootstrap=0)
    code, out, err = run_cli(["train", "--base", llama_dir, "--train-data", eval_files[1], "--eval-data", eval_files[0],
                              "--out", tmp_path / "run", "--steps", 12, "--eval-points", 6, "--seq-len", SEQ_LEN,
                              "--law", sweep, "--json"], capsys)
    assert code == 0, err
    forecasts = [r["forecast"] for r in json.loads(out) if "forecast" in r]
    assert forecasts and all(f["prior"] and f["planned_steps"] == 12 for f in forecasts)


def test_the_global_batch_trains_the_same_in_micro_batches_with_checkpointing(llama_dir, tok, code_blocks, eval_blocks):
    """batch_size is what one optimizer step trains on: 4 sequences in one pass, or in 2 passes
    of 2 with activations recomputed, give the same run up to float rounding, and records say
    how many tokens a step is."""
    runs = {}
    for name, extra in {"one pass": {}, "micro-batches": {"micro_batch_size": 2, "gradient_checkpointing": True}}.items():
        model = AutoModelForCausalLM.from_pretrained(llama_dir)
        settings = TrainSettings(steps=6, learning_rate=1e-2, batch_size=4, seq_len=SEQ_LEN, eval_points=3, **extra)
        runs[name] = finetune(model, tok, LoraSettings(rank=4, lora_alpha=8), settings, code_blocks[:-4], eval_blocks,
                              code_blocks[-4:], progress=False)
    for one, micro in zip(runs["one pass"], runs["micro-batches"]):
        assert one["tokens_per_step"] == micro["tokens_per_step"] == 4 * SEQ_LEN
        assert micro["kl"] == pytest.approx(one["kl"], rel=1e-3, abs=1e-7)
        assert micro["ft_loss"] == pytest.approx(one["ft_loss"], rel=1e-4)
    assert runs["one pass"][-1]["kl"] > 0


def test_trainer_args_reach_the_trainer(llama_dir, tok, code_blocks, eval_blocks):
    seen = {}

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen.update(weight_decay=args.weight_decay, optim=getattr(args.optim, "value", args.optim), accumulation=args.gradient_accumulation_steps)

    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    settings = TrainSettings(steps=1, batch_size=4, micro_batch_size=1, seq_len=SEQ_LEN, eval_points=2,
                             trainer_args={"weight_decay": 0.25, "optim": "adafactor"})
    finetune(model, tok, LoraSettings(rank=2), settings, code_blocks[:-4], eval_blocks, progress=False, callbacks=[Spy()])
    assert seen == {"weight_decay": 0.25, "optim": "adafactor", "accumulation": 4}


def test_records_kept_for_a_checkpoint_this_process_cannot_see_are_not_measured_again(llama_dir, tok, code_blocks, eval_blocks, tmp_path):
    """A point on a machine without the sweep directory would start over and repeat them."""
    settings = TrainSettings(steps=4, batch_size=4, seq_len=SEQ_LEN, eval_points=3)
    with pytest.raises(RuntimeError, match="up to step 2 were kept .* cannot see"):
        finetune(AutoModelForCausalLM.from_pretrained(llama_dir), tok, LoraSettings(rank=4), settings, code_blocks[:-4], eval_blocks,
                 code_blocks[-4:], progress=False, checkpoint_dir=tmp_path / "nowhere", earlier=[{"step": 0}, {"step": 2}])
