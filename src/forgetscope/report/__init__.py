"""`forgetscope report DIR`: one self-contained `DIR/report.html` (images embedded) and its PNGs.

What a reader of the paper expects, labelled by rank and module set: KL and forgetting
against steps with the fitted laws and their bands, forgetting against fine-tuning loss
with one line per module set, the forecasts of both validation tests against what
happened with their intervals and coverage, residuals, forgetting at matched fine-tuning
gain, the domains over steps, every form's errors, the paper's claims with the verdict
this sweep's numbers give (`laws.analyses.claims`); nothing is concluded that they do not.
A sweep with mitigated runs, or with `mitigate --sweep` results in `DIR/mitigation/`, also
gets the trade-off of each mitigation: fine-tuning gain against KL, KL at matched gain, and
the cheapest option under each KL budget (`mitigate.tradeoff`). The laws are fitted on the
unmitigated runs.

The parts: `inputs` reads the sweep's other files, `figures` draws (one function a figure),
`page` fills the templates; `write_report` decides what is read and writes the result whole.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import cast

from forgetscope.errors import UserInputError
from forgetscope.files import write_atomically
from forgetscope.laws.schema import Fits
from forgetscope.laws.select import fit_sweep, load_fits, read_table
from forgetscope.plots import png
from forgetscope.report import figures, page
from forgetscope.report.inputs import check_fitted_on, downstream_against_forgetting, mitigation_curves, sweep_title
from forgetscope.sweepdir import sweep_records

__all__ = ["downstream_against_forgetting", "write_report"]


def write_report(directory: str | Path, n_bootstrap: int = 1000, seed: int = 0) -> Path:
    """Write `report.html` and the PNGs next to the sweep's records, from its `fits.json` as
    `forgetscope fit` wrote it (never rewritten here). Without one, the laws are fitted first
    with `fit`'s defaults (and `n_bootstrap`, `seed`), and `fits.json` is written as `fit` would."""
    directory = Path(directory)
    # Every file is read and checked before anything is drawn: a bad one fails the report
    # with nothing written.
    title = sweep_title(directory)
    records = sweep_records(directory) if (directory / "records.jsonl").is_file() else ([], 0)  # read once, used twice
    table, fits, not_fitted = None, None, None
    try:
        table = read_table(directory, records)
        # Not fitted yet: fitted here as `forgetscope fit` would, and `fits.json` kept.
        found = (directory / "fits.json").is_file()
        fits = cast(Fits, load_fits(directory) if found else fit_sweep(directory, n_bootstrap, seed, table=table.copy()))  # as `FitsFile` checks
        check_fitted_on(fits, table, directory)
    except UserInputError as exc:
        table, fits, not_fitted = None, None, exc
    downstream = downstream_against_forgetting(directory, table) if table is not None else None
    curves = mitigation_curves(directory, records[0])
    if not_fitted is not None and curves is None:
        raise not_fitted
    # The images are written into a scratch folder and moved beside the records once the page
    # is: a failure half way (a full disk) leaves the earlier report as it was.
    with tempfile.TemporaryDirectory(dir=directory, prefix=".report-") as scratch:
        drawn = Path(scratch)
        images: dict[str, page.Image] = {}
        if table is not None and fits is not None:
            images = {name: page.Image(png(fig), caption) for name, fig, caption in figures.law_figures(table, fits, downstream)}
        if curves is not None:
            fig, caption = figures.tradeoff(curves)
            images["tradeoff.png"] = page.Image(png(fig), caption)
        for name, image in images.items():
            (drawn / name).write_bytes(image.png)
        html = page.render(title, images, table=table, fits=fits, downstream=downstream, curves=curves,
                           not_fitted=None if not_fitted is None else str(not_fitted))
        out = directory / "report.html"
        write_atomically(out, html)  # whole, or the previous one
        for name in images:
            os.replace(drawn / name, directory / name)
    return out
