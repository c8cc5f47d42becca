"""The report, part by part: each figure is a figure with a caption, the page shows text from
files as text, embeds the very PNGs it writes, is the same page on every run, and a report
that fails half way leaves the earlier one as it was; `fits.json` is what `laws.schema.Fits`
says it is."""

from __future__ import annotations

import base64
import json
import re
import shutil

import pytest
from matplotlib.figure import Figure

from forgetscope.laws.schema import Fits, LawFit
from forgetscope.laws.select import load_fits, read_table
from forgetscope.report import figures, page, write_report
from law_helpers import write_sweep

LAW_PNGS = ["kl_vs_steps.png", "forgetting_vs_steps.png", "heldout.png", "residuals.png", "forgetting_vs_ft_loss.png", "matched.png"]
"""The figures of a sweep without domains or downstream results, in page order."""

DOMAINS = {"domains": {"code": {"kl": 0.02, "loss_change": -0.3}, "prose": {"kl": 0.05, "loss_change": 0.1}},
           "most_hurt": "prose", "closest_to_finetuning": "code",
           "over_steps": [{"step": s, "code": 0.01 * s, "prose": 0.02 * s, "most_hurt": "prose"} for s in (1, 4, 16)]}
DOWNSTREAM = {"tasks": {"cloze": {"metric": "nll", "n_points": 3, "pearson": 0.9, "spearman": 1.0}},
              "points": [{"point_id": f"p{i}", "P": 1000 * i, "forgetting_ce": 4.6 + 0.1 * i,
                          "drops": {"cloze": {"worse": 0.01 * i, "difference_stderr": 0.002}}} for i in (1, 2, 3)]}


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A sweep of known laws reported before it was fitted: `(directory, the page's bytes)`."""
    directory = write_sweep(tmp_path_factory.mktemp("report") / "sweep", ranks=(1, 4, 16))
    return directory, write_report(directory, n_bootstrap=20, seed=1).read_bytes()


def test_a_sweep_not_yet_fitted_is_fitted_and_the_page_is_the_same_on_every_run(reported):
    directory, first = reported
    fits = load_fits(directory)  # kept, as `forgetscope fit` writes it
    assert len(fits["kl"]["bootstrap"]) == 20
    assert write_report(directory).read_bytes() == first  # drawn from the kept fits.json: the same page, byte for byte


def test_the_page_embeds_the_very_pngs_it_writes_beside_it(reported):
    directory, page_bytes = reported
    embedded = [base64.b64decode(data) for data in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page_bytes.decode())]
    assert sorted(p.name for p in directory.glob("*.png")) == sorted(LAW_PNGS)
    assert embedded == [(directory / name).read_bytes() for name in LAW_PNGS]


def test_each_figure_is_a_figure_with_something_drawn_and_a_caption(reported):
    directory, _ = reported
    fits = {**load_fits(directory), "domains": DOMAINS}
    drawn = list(figures.law_figures(read_table(directory), fits, DOWNSTREAM))
    assert [name for name, _, _ in drawn] == [*LAW_PNGS, "domains.png", "downstream.png"]
    for name, fig, caption in drawn:
        assert isinstance(fig, Figure) and caption.strip(), name
        assert any(ax.has_data() for ax in fig.axes), f"{name} has nothing drawn on it"


def test_a_figure_with_nothing_to_show_is_left_out(reported):
    directory, _ = reported
    fits = {**load_fits(directory), "matched_loss": {"levels": [], "note": "no run lowered its fine-tuning loss"}, "domains": {}}
    assert [name for name, _, _ in figures.law_figures(read_table(directory), fits, None)] == LAW_PNGS[:-1]


def test_text_from_files_is_shown_as_text_never_as_markup(reported):
    directory, _ = reported
    script, quote = "<script>alert(1)</script>", "holds' onmouseover='alert(2)"
    fits = {**load_fits(directory), "claims": [{"claim": script, "verdict": quote, "evidence": "<img src=x onerror=alert(3)>"}],
            "domains": {**DOMAINS, "closest_to_finetuning": script}}
    downstream = {**DOWNSTREAM, "points": [{**DOWNSTREAM["points"][0], "point_id": script}]}
    pages = [page.render(script, {}, table=read_table(directory), fits=fits, downstream=downstream),
             page.render(script, {}, curves={"no mitigation": [[{"gain": 0.1, "kl": 0.01}]], script: [[{"gain": 0.1, "kl": 0.02}]]},
                         not_fitted=script)]
    for html in pages:
        assert "<script" not in html and "<img src=x" not in html and "onmouseover='" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "class='holds&#39; onmouseover=&#39;alert(2)'" in pages[0]


@pytest.mark.parametrize("failing", ["a figure", "the page"])
def test_a_report_that_fails_half_way_leaves_the_earlier_one_as_it_was(reported, tmp_path, monkeypatch, failing):
    import forgetscope.report

    directory = shutil.copytree(reported[0], tmp_path / "sweep")
    for name in ("report.html", *LAW_PNGS):
        (directory / name).write_bytes(b"the earlier one")
    before = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if failing == "a figure":
        monkeypatch.setattr(figures, "residuals", full_disk)  # the fourth figure of six
    else:
        monkeypatch.setattr(forgetscope.report, "write_atomically", full_disk)  # every figure drawn, the page not written
    with pytest.raises(OSError):
        write_report(directory)
    assert {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()} == before
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []  # no scratch left behind


def test_fits_json_as_fit_writes_it_is_what_the_typeddict_says(reported):
    from pydantic import TypeAdapter

    written = json.loads((reported[0] / "fits.json").read_text())
    TypeAdapter(Fits).validate_python(written, strict=True)  # every declared key has its declared type
    assert set(written) <= Fits.__required_keys__ | Fits.__optional_keys__  # and every key is declared
    for target in ("kl", "forgetting_ce", "ft_loss"):
        assert set(written[target]) <= LawFit.__required_keys__ | LawFit.__optional_keys__, target
