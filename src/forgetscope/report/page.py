"""`report.html` from the templates beside this file (`page.html.j2`, which lays out the
sections of `sections.html.j2`), from data already read and figures already drawn. Jinja2
escapes every value (autoescape), so text from a file (a point id, a task or domain name, a
claim) is shown as text, never read as markup."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from importlib.resources import files

import jinja2
import pandas as pd

from forgetscope.laws.schema import Fits

SPLITS = {"in_time": "in time", "in_size": "in size", "in_size_far": "in size, the two largest P held out",
          "joint": "in size and time at once"}
"""The validation tests the page headlines, in order, with their names in words."""


@dataclass(frozen=True)
class Image:
    """A drawn figure: the PNG written beside the report and embedded in it, and its caption."""

    png: bytes
    caption: str


def render(title: str, images: dict[str, Image], *, table: pd.DataFrame | None = None, fits: Fits | None = None,
           downstream: dict | None = None, curves: dict[str, list[list[dict]]] | None = None, not_fitted: str | None = None) -> str:
    """The page: the laws when `fits` (of the records' `table`, with `downstream` results when
    the sweep has them), else why not (`not_fitted`); the trade-off of each mitigation when
    there are `curves`; every image embedded, in order."""
    template = _environment().get_template("page.html.j2")
    embedded = [{"src": "data:image/png;base64," + base64.b64encode(image.png).decode(), "caption": image.caption}
                for image in images.values()]
    return template.render(title=title, images=embedded, fits=fits, downstream=downstream, not_fitted=not_fitted,
                           arms=sorted(table.arm_name.unique()) if table is not None else [],
                           splits=SPLITS, mitigation=_mitigation(curves) if curves is not None else None)


def _mitigation(curves: dict[str, list[list[dict]]]) -> dict:
    """KL of each option at two fine-tuning gains (half and 80% of the unmitigated run's), and
    the cheapest option under each of a few KL budgets (`mitigate.tradeoff`)."""
    from forgetscope.mitigate import tradeoff

    full_gain = min((c[-1]["gain"] for c in curves.get("no mitigation", [])), default=None)
    gains = {share: share * full_gain for share in (0.5, 0.8)} if full_gain else {}
    matched = [{"share": share, "gain": gain, "rows": tradeoff.matched_table(curves, gain)} for share, gain in gains.items()]
    kls = [p["kl"] for runs in curves.values() for c in runs for p in c]
    return {"matched": matched, "cheapest": tradeoff.cheapest_table(curves, tradeoff.levels(kls))}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FunctionLoader(lambda name: files("forgetscope.report").joinpath(name).read_text()),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["pct"] = _pct
    env.filters["exp"] = math.exp  # an anchor's log offset as the factor it moves the law by
    return env


def _num(value: float | None, spec: str, unit: str = "") -> str:
    """`value` formatted by `spec` (Python's format mini-language) and `unit`; `-` for none."""
    return "-" if value is None else f"{value:{spec}}{unit}"


def _pct(value: float | None) -> str:
    """A share as a percentage; `-` for none or NaN."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.1%}"
