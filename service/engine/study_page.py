"""A study as one self-contained HTML file: definition, best trial, importances, diagnosis, plots.

Self-contained means it opens from a mail attachment or an air-gapped share: the plots are PNG
data URIs, the style is inline, nothing is fetched (the page's own Content-Security-Policy
forbids it). Study names, params, hints and the definition are user input: every one of them
goes through html.escape, and the CSP forbids scripts in case one ever did not."""

from __future__ import annotations

import base64
import html
import logging
import math
from datetime import UTC, datetime
from typing import Any

import yaml

from service.engine.studies import feasible
from service.engine.summaries import BestTrial, Diagnosis, FrontTrial, StudySummary
from service.engine.plots import (
    KINDS,
    NothingToPlot,
    PlotInputs,
    importance_sample,
    importances,
    render,
)

log = logging.getLogger("hpo.report")

# Also sent as the response header; in the file it still holds when opened from disk.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

TITLES = {
    "history": "Optimization history",
    "curves": "Learning curves",
    "lr": "Objective against learning rate",
    "importance": "Parameter importances",
    "parallel": "Parallel coordinates",
    "pareto": "Pareto front",
}

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
figure { margin: 1.5em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #666; font-style: italic; }
"""


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


def build(summary: StudySummary, inputs: PlotInputs) -> str:
    """The report page; `summary` is service.engine.studies.summary() of the same study."""
    spec = inputs.spec
    try:
        found: dict[str, float] | None = importances(spec, inputs.trials)
        used, total = importance_sample(inputs.trials)
        importance_note = f"Computed on {len(used)} of {total} complete trials, evenly spaced." if len(used) < total else ""
    except NothingToPlot as exc:
        found, importance_note = None, exc.detail
    sections = [
        _header(summary, spec.kind),
        _front(summary.best_trials, inputs.spec) if inputs.spec.objectives else _best(summary.best_trial),
        _constraints(spec, inputs.trials),
        _importances(found, importance_note),
        _diagnosis(summary.diagnosis),
        # The study API's view (it says "pending" while the range test runs), else the stored one.
        _lr_range(summary.lr_range or inputs.extra.get("lr_range")),
        _plots(inputs, found),
        _definition(summary.definition or {}),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>hpo report: {e(summary.name)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(s for s in sections if s)
        + "\n</body></html>\n"
    )


def _header(summary: StudySummary, kind: str) -> str:
    counts = summary.counts
    cells = "".join(f"<th>{e(state.lower())}</th>" for state in counts)
    values = "".join(f"<td class=\"num\">{e(n)}</td>" for n in counts.values())
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<h1>Study {e(summary.name)}</h1>\n"
        f"<p>Optuna study <code>{e(summary.optuna_name)}</code> · kind {e(kind)} · "
        f"{e(summary.direction)} · state {e(summary.state)} · "
        f"budget {e(summary.n_trials)} trials · report generated {e(generated)}</p>\n"
        f"<table><tr>{cells}</tr><tr>{values}</tr></table>"
    )


def _best(best: BestTrial | None) -> str:
    if not best:
        return "<h2>Best trial</h2>\n<p class=\"note\">No complete trial yet.</p>"
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(fmt(v))}</td></tr>" for k, v in sorted(best.params.items()))
    return (
        f"<h2>Best trial</h2>\n<p id=\"best\">Trial {e(best.number)}: objective <strong>{e(fmt(best.value))}</strong></p>\n"
        f"<table><tr><th>parameter</th><th>value</th></tr>{rows}</table>"
    )


def _front(front: list[FrontTrial] | None, spec: Any) -> str:
    if not front:
        return "<h2>Pareto front</h2>\n<p class=\"note\">No complete trial yet.</p>"
    names = [o.name for o in spec.objectives]
    params = sorted({k for t in front for k in t.params})
    head = "".join(f"<th>{e(n)} ({e(o.direction)})</th>" for n, o in zip(names, spec.objectives)) + "".join(f"<th>{e(p)}</th>" for p in params)
    rows = "".join(
        f"<tr><td class=\"num\">{e(t.number)}</td>"
        + "".join(f"<td class=\"num\">{e(fmt(v))}</td>" for v in t.values)
        + "".join(f"<td>{e(fmt(t.params.get(p, '')))}</td>" for p in params)
        + "</tr>"
        for t in front
    )
    return f"<h2>Pareto front</h2>\n<p id=\"front\">{len(front)} trials no other trial beats on every objective.</p>\n<table><tr><th>trial</th>{head}</tr>{rows}</table>"


def _constraints(spec: Any, trials: list[Any]) -> str:
    if not spec.constraints:
        return ""
    bounds = "; ".join(
        " and ".join(part for part in (f"{e(c.metric)} &ge; {e(fmt(c.min))}" if c.min is not None else "", f"{e(c.metric)} &le; {e(fmt(c.max))}" if c.max is not None else "") if part)
        for c in spec.constraints
    )
    judged = [t for t in trials if t.state.name == "COMPLETE" and t.constraints]
    infeasible = [t.number for t in judged if feasible(t) is False]
    listed = ", ".join(f"#{n}" for n in infeasible[:50]) + (" ..." if len(infeasible) > 50 else "")
    return (
        f"<h2>Constraints</h2>\n<p id=\"constraints\">{bounds}. {len(infeasible)} of {len(judged)} complete trials are infeasible"
        + (f" ({e(listed)}): never the best, drawn as grey crosses in the history plot." if infeasible else ".")
        + "</p>"
    )


def _importances(found: dict[str, float] | None, note: str) -> str:
    """`note`: why there are none, or which trials they were computed on."""
    if found is None:
        return f"<h2>Parameter importances (fANOVA)</h2>\n<p class=\"note\">Not computable yet: {e(note)}</p>"
    rows = "".join(f"<tr><td>{e(k)}</td><td class=\"num\">{v:.3f}</td></tr>" for k, v in sorted(found.items(), key=lambda kv: -kv[1]))
    return f"<h2>Parameter importances (fANOVA)</h2>\n<table><tr><th>parameter</th><th>importance</th></tr>{rows}</table>" + (
        f"<p class=\"note\">{e(note)}</p>" if note else ""
    )


def _diagnosis(diagnosis: Diagnosis) -> str:
    counts, hints = diagnosis.counts, diagnosis.hints
    rows = "".join(f"<tr><td>{e(k.replace('_', ' '))}</td><td class=\"num\">{e(n)}</td></tr>" for k, n in counts.items())
    table = f"<table><tr><th>learning curve</th><th>trials</th></tr>{rows}</table>" if rows else ""
    advice = "".join(f"<li>{e(h)}</li>" for h in hints)
    advice = f"<ul>{advice}</ul>" if advice else "<p class=\"note\">No hints: nothing in the curves calls for a change.</p>"
    return f"<h2>Diagnosis</h2>\n{table}\n{advice}"


def _lr_range(lr_range: dict[str, Any] | None) -> str:
    if not lr_range:
        return ""
    narrowed = lr_range.get("narrowed")
    if narrowed:
        what = f"narrowed to {fmt(narrowed[0])} .. {fmt(narrowed[1])}"
    else:
        what = "not narrowed yet (the range test is running)" if lr_range.get("status") == "pending" else "not narrowed"
    detail = f" ({lr_range['detail']})" if lr_range.get("detail") else ""
    original = lr_range.get("original") or ["?", "?"]
    return (
        f"<h2>LR range test</h2>\n<p>lr {e(what)} from {e(fmt(original[0]))} .. {e(fmt(original[1]))}{e(detail)}; "
        f"range test study <code>{e(lr_range.get('finder_study', ''))}</code>.</p>"
    )


def _plots(inputs: PlotInputs, found: dict[str, float] | None) -> str:
    parts = ["<h2>Plots</h2>"]
    for kind in KINDS:
        if kind == "pareto" and not inputs.spec.objectives:
            continue  # a single objective has no front
        title = TITLES[kind]
        try:
            # The importance plot reuses the numbers of the table above: one fANOVA, not two.
            extra = {**inputs.extra, "importances": found} if found else inputs.extra
            png = render(kind, inputs.spec, inputs.trials, extra)
        except NothingToPlot as exc:
            parts.append(f"<p class=\"note\" id=\"plot-{kind}\">{e(title)}: not drawn: {e(exc.detail)}</p>")
            continue
        except Exception:
            log.exception("report: the %s plot of %s failed", kind, inputs.spec.name)
            parts.append(f"<p class=\"note\" id=\"plot-{kind}\">{e(title)}: could not be drawn (see the server log).</p>")
            continue
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f"<figure id=\"plot-{kind}\"><img alt=\"{e(title)}\" width=\"800\" height=\"500\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{e(title)}</figcaption></figure>"
        )
    return "\n".join(parts)


def _definition(definition: dict[str, Any]) -> str:
    text = yaml.safe_dump(definition, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return f"<h2>Definition</h2>\n<pre id=\"definition\">{e(text)}</pre>"
