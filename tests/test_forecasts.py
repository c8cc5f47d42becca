"""Forecasts that hold, on sweeps drawn from known laws (`law_helpers`): the law with a
factor per module set is chosen and recovers the truth, held-out forecasts are within 5%,
intervals cover at about their nominal rate over repeated draws, runs at different learning
rates share one law, `predict` is coherent and refuses what the validation did not test,
and bad input never leaves `fits.json` half written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import assert_user_error, run_cli
from forgetscope.laws.select import TRANSIENT, fit_sweep, fit_target, load_fits, read_table
from law_helpers import ARMS, FT_START, GAIN_LAW, H_BASE, KL_LAW, VOCAB, truth, write_sweep


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    directory = write_sweep(tmp_path_factory.mktemp("known") / "sweep")
    fit_sweep(directory, n_bootstrap=200, kl_law="select")  # data from one known law: the form that fits it is the one to pick
    return directory


def test_the_law_with_a_factor_per_module_set_is_chosen_and_recovers_the_truth(known):
    kl = load_fits(known)["kl"]
    assert kl["label"] == "broken+arms"
    assert kl["params"]["k[q_proj,v_proj]"] == pytest.approx(ARMS["q_proj,v_proj"][0], rel=0.05)
    truth_params = {"alpha": KL_LAW[1], "beta1": KL_LAW[2], "beta2": KL_LAW[2] - KL_LAW[3]}
    for name, value in truth_params.items():
        assert kl["params"][name] == pytest.approx(value, rel=0.05), name


def test_held_out_forecasts_of_the_last_steps_are_within_8_percent_in_time_and_in_size(known):
    fits = load_fits(known)  # 3% noise on each measurement, and one last step per held-out run
    for target in ("kl", "forgetting_ce", "ft_loss"):
        for split in ("in_time", "in_size"):
            assert fits[target]["validation"][split]["median_ape"] < 0.08, (target, split)
    for split in ("in_size_far", "joint"):  # 4x beyond in P, and 2x beyond in P and in steps at once
        assert fits["kl"]["validation"][split]["median_ape"] < 0.08, split


def test_interval_coverage_is_near_nominal_over_repeated_draws(tmp_path):
    # Ten draws (100 forecasts, in groups of one draw's): over twenty, 90% inside. Six were too
    # few: one draw's in-time split, all outside or all inside, moved the rate by 3 points.
    inside, total, widths = 0, 0, []
    for draw in range(10):
        table = read_table(write_sweep(tmp_path / f"d{draw}", seed=100 + draw, noise=0.05, arms=("all-linear",)))
        interval = fit_target(table, "kl", n_bootstrap=100, seed=draw, transfer_slope=0.0, kl_law="select")["interval"]  # its own calibration
        for f in interval["forecasts"].values():
            actual, low, high = map(np.array, (f["actual"], f["low"], f["high"]))
            inside += int(((low <= actual) & (actual <= high)).sum())
            total += len(actual)
            widths += list(high / low)
    assert 0.85 <= inside / total <= 1.0, inside / total
    assert np.median(widths) < 1.8  # and not by being vacuous: the median band is under a factor 1.8 wide


def test_runs_at_different_learning_rates_share_one_law_in_learning_rate_times_steps(tmp_path, capsys):
    directory = write_sweep(tmp_path / "s", arms=("all-linear",), learning_rates=(5e-4, 1e-3, 2e-3))
    fit_sweep(directory, n_bootstrap=50, kl_law="select")
    code, out, err = run_cli(["predict", directory, "--rank", 8, "--learning-rate", 2e-3, "--steps", 90, "--json"], capsys)
    assert code == 0, err
    kl = json.loads(out)["kl"]
    assert kl["value"] == pytest.approx(float(truth(KL_LAW, 8 * ARMS["all-linear"][1], 180)), rel=0.05)


def test_predict_is_coherent_and_works_out_p_from_the_rank(known, capsys):
    code, out, err = run_cli(["predict", known, "--rank", 8, "--target-modules", "q_proj,v_proj", "--steps", 150, "--json"], capsys)
    assert code == 0, err
    f = json.loads(out)
    P = 8 * ARMS["q_proj,v_proj"][1]
    assert f["kl"]["P"] == P and f["kl"]["validated"] is True
    assert f["kl"]["value"] == pytest.approx(float(truth(KL_LAW, P, 150, 3.0)), rel=0.05)
    assert f["forgetting_ce"]["value"] == pytest.approx(H_BASE + f["kl"]["value"], rel=1e-3)  # L_f = H_base + KL
    assert f["ft_loss"]["value"] == pytest.approx(FT_START - float(truth(GAIN_LAW, P, 150)), rel=0.01)
    for target in f.values():
        assert target["low"] <= target["value"] <= target["high"]
    code, out, err = run_cli(["predict", known, "--rank", 8, "--target-modules", "all-linear", "--steps", 0, "--json"], capsys)
    start = json.loads(out)
    assert start["kl"]["value"] == 0 and start["forgetting_ce"]["value"] == pytest.approx(H_BASE)
    assert start["ft_loss"]["value"] == pytest.approx(FT_START, rel=0.01)  # step 0 is the base


def test_predict_beyond_the_validated_range_needs_extrapolate_and_then_widens(known, capsys):
    args = ["predict", known, "--rank", 8, "--target-modules", "all-linear", "--json"]
    code, _, err = run_cli([*args, "--steps", 5000], capsys)
    assert_user_error(code, err, "beyond the 200 the in-time test validated")  # in time, the benchmark held no further
    code, _, err = run_cli([*args[:3], 4096, *args[4:], "--steps", 100], capsys)
    assert_user_error(code, err, "in-size test validated for all-linear")
    small = [*args[:3], 1, *args[4:]]  # rank 1: far beyond the steps, but short of the uniform cap
    inside = json.loads(run_cli([*small, "--steps", 200], capsys)[1])["kl"]
    code, out, err = run_cli([*small, "--steps", 1600, "--extrapolate"], capsys)
    assert code == 0, err
    far = json.loads(out)["kl"]
    assert far["validated"] is False and far["interval_widening"] > 1
    assert np.log(far["high"] / far["low"]) > np.log(inside["high"] / inside["low"])
    huge = json.loads(run_cli([*args[:3], 10**6, *args[4:], "--steps", 10**7, "--extrapolate"], capsys)[1])
    assert huge["kl"]["capped_at_uniform"] and huge["kl"]["high"] <= np.log(VOCAB) + 1e-9  # a uniform prediction's cross-entropy
    assert huge["forgetting_ce"]["high"] <= H_BASE + np.log(VOCAB) + 1e-9


def test_a_sweep_with_several_module_sets_asks_which_one(known, capsys):
    code, _, err = run_cli(["predict", known, "--rank", 8, "--steps", 50], capsys)
    assert_user_error(code, err, "give --target-modules")
    code, _, err = run_cli(["predict", known, "--rank", 8, "--target-modules", "k_proj", "--steps", 50], capsys)
    assert_user_error(code, err, "is not in this sweep")


def test_the_analyses_report_one_line_per_module_set_and_the_matched_gain_ratio(known):
    fits = load_fits(known)
    assert set(fits["linear"]["per_arm"]) == set(ARMS)
    across = [r for level in fits["matched_loss"]["levels"] for r in level["across"].values()]
    assert across and all(r["low"] <= r["ratio"] <= r["high"] for r in across)
    assert all(r["ratio"] < 1 for r in across)  # all-linear / q,v: q,v forgets 3x more at the same P and T
    verdicts = {c["claim"]: c["verdict"] for c in fits["claims"]}
    assert verdicts["Across module sets, forgetting at the same fine-tuning gain is the same"] == "fails"


def test_a_split_that_leaves_too_few_points_is_refused_and_fits_json_stays_intact(tmp_path, capsys):
    directory = write_sweep(tmp_path / "s", arms=("all-linear",))
    (directory / "fits.json").write_text('{"kept": true}')
    records = [json.loads(line) for line in (directory / "records.jsonl").read_text().splitlines()]
    short = [r for r in records if r["step"] <= 3]  # steps 1 and 3: nothing left to fit in time
    (directory / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in short))
    code, _, err = run_cli(["fit", directory], capsys)
    assert_user_error(code, err, "too few measurements")
    assert json.loads((directory / "fits.json").read_text()) == {"kept": True}


def test_a_sweep_with_one_rank_and_one_module_set_is_refused_and_fits_json_stays_intact(tmp_path, capsys):
    directory = write_sweep(tmp_path / "s", ranks=(4,), arms=("all-linear",))
    (directory / "fits.json").write_text('{"kept": true}')
    code, _, err = run_cli(["fit", directory], capsys)
    assert_user_error(code, err, "same number of trainable parameters")
    assert json.loads((directory / "fits.json").read_text()) == {"kept": True}


def test_runs_with_replay_get_the_replay_knob_and_predict_forecasts_with_it(tmp_path, capsys):
    from law_helpers import REPLAY_B

    directory = write_sweep(tmp_path / "replay", arms=("all-linear",), replay_fractions=(0.0, 0.01, 0.05))
    fits = fit_sweep(directory, n_bootstrap=50, kl_law="select")
    assert fits["kl"]["label"].endswith("+replay") and fits["kl"]["replay"]
    assert fits["kl"]["params"]["B_replay"] == pytest.approx(REPLAY_B, rel=0.2)
    assert fits["kl"]["validation"]["in_size"]["median_ape"] < 0.1
    forecast = {}
    for fraction in ("0", "0.05"):
        code, out, err = run_cli(["predict", directory, "--rank", 8, "--steps", 150, "--replay-fraction", fraction, "--json"], capsys)
        assert code == 0, err
        forecast[fraction] = json.loads(out)["kl"]["value"]
    assert forecast["0.05"] / forecast["0"] == pytest.approx(1 / (1 + REPLAY_B * 0.05), rel=0.1)
    code, _, err = run_cli(["predict", directory, "--rank", 8, "--steps", 150, "--replay-fraction", 0.2], capsys)
    assert_user_error(code, err, "beyond the 0.05")


def test_a_law_without_the_knob_refuses_a_replay_forecast(known, capsys):
    code, _, err = run_cli(["predict", known, "--rank", 8, "--target-modules", "all-linear", "--steps", 100, "--replay-fraction", 0.01], capsys)
    assert_user_error(code, err, "no replay knob")


def test_the_averaged_law_leaves_out_each_runs_first_steps_unless_that_leaves_too_few_to_validate(tmp_path, monkeypatch):
    from forgetscope.laws import select

    table = read_table(write_sweep(tmp_path / "s", arms=("all-linear",)))
    kl = fit_target(table, "kl", n_bootstrap=0)
    assert kl["transient"] == select.TRANSIENT and kl["n"] == int(((table.N >= select.TRANSIENT * 200) & (table.kl > 0)).sum())
    monkeypatch.setattr(select, "TRANSIENT", 0.5)  # past half of each run: nothing left to fit in time
    kl = fit_target(table, "kl", n_bootstrap=0)
    assert kl["transient"] == 0.0 and kl["n"] == int(((table.N > 0) & (table.kl > 0)).sum())
    assert fit_target(table, "kl", n_bootstrap=0, kl_law="select")["transient"] == 0.0  # the one selected law: every step


def test_the_averaged_law_is_anchored_per_arm_onto_its_runs_last_measurements(tmp_path):
    from forgetscope.laws.fit import Anchored
    from forgetscope.laws.forecast import fit_from

    table = read_table(write_sweep(tmp_path / "s", noise=0.1))
    kl = fit_target(table, "kl", n_bootstrap=0)
    law = fit_from(kl)
    assert isinstance(law, Anchored) and law.arms == tuple(sorted(ARMS)) and kl["anchor"]["arms"] == list(law.arms)
    ends = table[table.N == table.N.max()]  # every run ends at the same step: the horizon
    for name, rows in ends.groupby("arm_name"):
        arm = law.arms.index(name)
        P, T, y = rows.P.to_numpy(float), rows["T"].to_numpy(float), rows.kl.to_numpy(float)
        inner = np.log(y) - np.log(law.law.predict(P, T, arm=arm if law.law.arms else None))
        assert kl["anchor"]["offsets"][arm] == pytest.approx(inner.mean())  # the inner law's mean miss at the runs' ends
        assert np.mean(np.log(y) - np.log(law.predict(P, T, arm=arm))) == pytest.approx(0.0, abs=1e-9)  # ... moved away
        start = law.starts[arm] * 0.999  # before its start, the inner law's shape
        assert law.predict(P, start, arm=arm) == pytest.approx(law.law.predict(P, start, arm=arm if law.law.arms else None))
    assert "anchor" not in fit_target(table, "kl", n_bootstrap=0, kl_law="select")  # the one selected law, as before


def test_the_anchor_is_taken_at_every_runs_end_at_several_learning_rates_and_with_replay(tmp_path):
    from forgetscope.laws.forecast import fit_from

    for name, sweep in (("learning rates", {"learning_rates": (5e-4, 1e-3, 2e-3)}), ("replay", {"replay_fractions": (0.0, 0.2, 0.5)})):
        table = read_table(write_sweep(tmp_path / name.replace(" ", "-"), noise=0.05, **sweep))
        kl = fit_target(table, "kl", n_bootstrap=0)
        law = fit_from(kl)
        ends = table[table.N == table.N.max()]  # each run's end: at T = N lr / lr_ref, earlier for a lower rate
        arm = ends.arm_name.map(law.arms.index).to_numpy()
        miss = np.log(ends.kl.to_numpy()) - np.log(law.predict(ends.P.to_numpy(float), ends["T"].to_numpy(float), arm=arm,
                                                                  replay=ends.replay_fraction.to_numpy(float)))
        for a in range(len(law.arms)):  # every run's end is past its arm's horizon: the anchor holds there in full
            assert miss[arm == a].mean() == pytest.approx(0.0, abs=1e-9), name
        assert np.all(np.abs(kl["anchor"]["offsets"]) < 0.25), (name, kl["anchor"])  # replay's effect is the law's knob, not an offset


def test_each_bootstrap_resample_is_anchored_on_the_runs_it_drew(tmp_path, capsys):
    from forgetscope.laws.fit import resample_counts
    from forgetscope.laws.forecast import fit_from, samples_from

    directory = write_sweep(tmp_path / "s", noise=0.1)
    fits = fit_sweep(directory, n_bootstrap=20)
    law, samples = fit_from(fits["kl"]), samples_from(fits["kl"])
    assert law.sample_offsets is not None and law.sample_offsets.shape == (20, len(law.arms))
    table = read_table(directory)
    assert fits["kl"]["transient"] == TRANSIENT
    rows = table[(table.N >= TRANSIENT * table.groupby("point_id").N.transform("max")) & (table.kl > 0)]  # the rows it was fitted to
    ends = rows.loc[rows.groupby("point_id").N.idxmax()].sort_values("point_id")  # in the order bootstrap counts runs
    arm = ends.arm_name.map(law.arms.index).to_numpy()
    miss = np.log(ends.kl.to_numpy()) - np.log(law.predict(ends.P.to_numpy(float), ends["T"].to_numpy(float), samples, arm=arm))
    counts = resample_counts(rows.point_id.to_numpy(), 20, 0)
    for a in range(len(law.arms)):  # each resample's mean miss at the ends of the runs it drew of this arm: none
        drew = counts * (arm == a)
        has = drew.sum(axis=1) > 0
        assert np.allclose((drew * miss).sum(axis=1)[has] / drew.sum(axis=1)[has], 0.0, atol=1e-9)
    fits["kl"]["anchor"]["sample_offsets"] = fits["kl"]["anchor"]["sample_offsets"][:5]  # fewer rows than resamples
    (directory / "fits.json").write_text(json.dumps(fits))
    code, _, err = run_cli(["predict", directory, "--rank", 4, "--target-modules", "all-linear", "--steps", 100], capsys)
    assert_user_error(code, err, "sample_offsets")


def test_the_interval_slope_pools_the_sweeps_own_with_the_benchmarks_by_how_many_forecasts_each_rests_on():
    from forgetscope.laws.select import interval_slope

    assert interval_slope(0.3, 16, 0.0) == pytest.approx(0.3)  # no benchmark: the sweep's own
    assert interval_slope(0.0, 0, 0.0) == 0.0  # neither: no model-error term
    assert interval_slope(0.0, 0, 0.26, 160) == pytest.approx(0.26)  # no tests of its own: the benchmark's
    assert interval_slope(0.26, 16, 0.26, 160) == pytest.approx(0.26)  # agreeing: that slope
    few, many = interval_slope(1.0, 16, 0.26, 160), interval_slope(1.0, 1600, 0.26, 160)
    assert 0.26 < few < 0.45 < 0.9 < many < 1.0  # a pilot's few noisy tests move it a little, many tests most of the way


def test_the_benchmarks_slope_of_log_kl_widens_kls_intervals_and_no_others(known):
    # L_f is about 5 nats of which KL is a few hundredths: KL's slope in log L_f made the
    # report's L_f - H_base intervals run from below zero to 1.5 around forecasts near 0.1.
    from forgetscope.laws.select import BENCHMARK_SLOPE, interval_slope

    fits = load_fits(known)
    kl = fits["kl"]["interval"]
    assert kl["slope"] == pytest.approx(interval_slope(kl["slope_calibrated"], kl["n_calibration"], BENCHMARK_SLOPE["select"]))
    for target in ("forgetting_ce", "ft_loss"):
        interval = fits[target]["interval"]
        assert interval["slope"] == pytest.approx(interval["slope_calibrated"]), target
    assert min(fits["forgetting_ce"]["interval"]["forecasts"]["in_time"]["low"]) > 0  # L_f - H_base: never below the base's entropy


def test_the_model_error_term_is_sized_for_what_the_band_and_the_seed_noise_leave_of_an_error():
    from forgetscope.laws.fit import band_side, model_error, widen

    # the band's end toward the measurement: below for a forecast too high, above for one too low
    assert band_side(0.5, 1.0, 0.8, 1.3) == pytest.approx(np.log(1 / 0.8))
    assert band_side(-0.5, 1.0, 0.8, 1.3) == pytest.approx(np.log(1.3))
    assert band_side(0.5, 1.0, 1.1, 1.3) == 0.0  # a rising law's band is widened around its value
    assert band_side(0.5, 1.0, 1.1, 1.3, falling=True) == pytest.approx(np.log(1 / 1.1))  # a falling one's from its ends
    assert model_error(0.3, 0.5, 0.2) == 0.0  # inside the band: nothing left to cover
    assert model_error(-0.3, 0.1, 0.5) == 0.0  # inside the seed noise
    needed = float(model_error(1.0, 0.6, 0.3))
    assert needed == pytest.approx(np.sqrt(1.0 - 0.36 - 0.09))
    # and the interval issued with exactly that much model error reaches the error, no further
    low, high = widen(1.0, np.exp(-0.6), np.exp(0.6), np.hypot(0.3, needed))
    assert np.log(high) == pytest.approx(1.0) and np.log(low) == pytest.approx(-1.0)
    # a falling law's band is moved out by the half-width, not added in quadrature
    assert model_error(1.0, 0.6, 0.3, falling=True) == pytest.approx(np.sqrt(0.4**2 - 0.3**2))
    low, high = widen(1.0, np.exp(-0.6), np.exp(0.6), 0.4, falling=True)
    assert np.log(high) == pytest.approx(1.0)


def test_a_lowering_anchor_never_makes_a_rising_law_fall():
    from forgetscope.laws.fit import anchor
    from forgetscope.laws.forms import FORMS
    from forgetscope.laws.select import fit_law

    N = np.tile(np.geomspace(10, 100, 8), 2)
    P = np.repeat([1e4, 4e4], 8)
    y = 1e-4 * P**0.1 * N**0.3
    y[[7, 15]] *= 0.3  # each run ends far below the law: the offset is about log 0.3 over one doubling
    law = fit_law(FORMS.get("mult"), P, N, y, shift=0.0)
    anchored = anchor(law, P, N, y, np.repeat(["a", "b"], 8), np.repeat(["all"], 16), ("all",))
    assert anchored.offsets[0] < -0.5 and anchored.starts[0] < anchored.horizons[0] / 2  # a longer ramp than one doubling
    grid = np.geomspace(1, 1000, 400)
    assert np.all(np.diff(anchored.predict(4e4, grid)) > 0)


def test_past_the_sweep_growth_slows_with_the_level_kl_has_reached():
    from forgetscope.laws.fit import Saturation

    slowing = Saturation(a=-0.4, b=-0.35, weight=0.0, base_entropy=5.0)
    start = np.array([0.005, 0.05, 0.5])  # KL at the sweep's end
    ratio = np.array([1.0, 1.01, 2.0, 4.0, 1e12])
    continued = slowing.blend(np.ones((3, 5)), start[:, None], ratio[None, :])
    z = np.log(start / 5.0)
    local = np.log(continued[:, 1] / start) / np.log(1.01)
    assert local == pytest.approx(-0.4 - 0.35 * z, rel=0.01)  # the slope where it starts: a + b log(KL / H_base)
    assert np.all(np.diff(local) < 0)  # the higher KL has got, the slower it grows
    assert continued[:, 0] == pytest.approx(start)
    assert continued[:, -1] == pytest.approx(5.0 * np.exp(-0.4 / 0.35), rel=1e-3)  # it levels off at H_base exp(-a / b)
    past = slowing.blend(np.ones(3), np.full(3, 4.0), ratio[1:4])
    assert past == pytest.approx(4.0)  # a KL already past that level stays there: it never falls
    law = np.array([0.2, 0.4])
    assert Saturation(-0.4, -0.35, 1.0, 5.0).blend(law, np.array([0.1, 0.1]), np.array([2.0, 4.0])) == pytest.approx(law)
    half = Saturation(-0.4, -0.35, 0.5, 5.0).blend(law, np.array([0.1, 0.1]), np.array([2.0, 4.0]))
    assert half == pytest.approx(np.sqrt(law * Saturation(-0.4, -0.35, 0.0, 5.0).blend(law, np.array([0.1, 0.1]), np.array([2.0, 4.0]))))


def test_the_averaged_law_slows_only_past_each_arms_longest_run_and_fits_json_keeps_how(tmp_path):
    from forgetscope.laws.forecast import fit_from
    from forgetscope.laws.select import BENCHMARK_SATURATION

    directory = write_sweep(tmp_path / "s", noise=0.05, learning_rates=(5e-4, 1e-3, 2e-3))
    fits = fit_sweep(directory, n_bootstrap=0)
    saturation = fits["kl"]["anchor"]["saturation"]
    assert {k: saturation[k] for k in BENCHMARK_SATURATION} == BENCHMARK_SATURATION and saturation["base_entropy"] == pytest.approx(H_BASE, rel=0.05)
    law = fit_from(load_fits(directory)["kl"])
    alone = fit_from({**fits["kl"], "anchor": {k: v for k, v in fits["kl"]["anchor"].items() if k != "saturation"}})
    table = read_table(directory)
    for name, rows in table.groupby("arm_name"):
        arm = law.arms.index(name)
        longest = rows["T"].max()
        assert saturation["after"][arm] == pytest.approx(longest)  # the end of the arm's longest run (the highest rate's)
        P = rows.P.max()
        inside, beyond = np.geomspace(1, longest, 20), longest * np.array([2.0, 4.0])
        assert law.predict(P, inside, arm=arm) == pytest.approx(alone.predict(P, inside, arm=arm))  # no measured step moves
        assert not np.allclose(law.predict(P, beyond, arm=arm), alone.predict(P, beyond, arm=arm))


def test_an_anchor_naming_arms_the_sweep_or_its_members_do_not_have_is_refused_in_one_line(tmp_path, capsys):
    directory = write_sweep(tmp_path / "s")
    fits = fit_sweep(directory, n_bootstrap=0)
    code, _, err = run_cli(["predict", directory, "--params", 5000, "--steps", 100], capsys)
    assert_user_error(code, err, "give --target-modules")  # each module set has its own anchor
    written = json.dumps(fits)
    fits["kl"]["anchor"]["arms"] = ["all-linear", "gate_proj"]
    (directory / "fits.json").write_text(json.dumps(fits))
    code, _, err = run_cli(["predict", directory, "--rank", 4, "--target-modules", "all-linear", "--steps", 100], capsys)
    assert_user_error(code, err, "kl.anchor.arms")
    fits = json.loads(written)
    fits["kl"]["anchor"]["arms"] = fits["kl"]["anchor"]["arms"][::-1]  # the members' factors would go to the other arm
    fits["kl"]["members"][0]["arms"] = sorted(fits["kl"]["anchor"]["arms"])
    (directory / "fits.json").write_text(json.dumps(fits))
    code, _, err = run_cli(["predict", directory, "--rank", 4, "--target-modules", "all-linear", "--steps", 100], capsys)
    assert_user_error(code, err, "not the arms its members have factors for")


def test_a_test_reaches_in_size_only_as_far_as_every_arm_it_held_out(tmp_path):
    # q, v run at ranks 2 and 16 only (an 8x gap), all-linear at 1 to 32 (2x): the in-size test
    # reached 2x, not 8x, for all-linear, and must not validate 8x for it.
    directory = write_sweep(tmp_path / "s")
    lines = [line for line in (directory / "records.jsonl").read_text().splitlines()
             if '"q_proj' not in line or json.loads(line)["rank"] in (2, 16)]
    (directory / "records.jsonl").write_text("\n".join(lines) + "\n")
    kl = fit_target(read_table(directory), "kl", n_bootstrap=0)
    assert kl["validation"]["in_size"]["reach_P"] == 1.0
