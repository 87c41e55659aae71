"""The job report: one self-contained HTML page (inline CSS and SVG, no scripts, no external assets) that shows
what an edit did. ``gif edit --report`` writes it; the API serves the same page at ``GET /v1/jobs/{id}/report``.

Every value shown comes from the ``EditResult`` and the job specification; text is escaped, and numbers that
are not finite are drawn as gaps, never as made-up points.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from gif.metrics import metric_columns
from gif.result import AttackAucs, EditResult, Membership, MethodComparison

WIDTH, HEIGHT = 560, 260
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 62, 16, 14, 44
COLOURS = {
    "before": "#8a8f98",
    "after": "#1f6fd1",
    "retrained": "#e07b00",
    "removed": "#c0392b",
    "held-out": "#e07b00",
    "retained": "#1f6fd1",
    "removed, before the edit": "#e6a39b",
}

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d2430;margin:0;background:#f4f6f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:0 0 10px}
.sub{color:#5b6472;margin:0 0 18px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px}
section{background:#fff;border:1px solid #dde2e9;border-radius:8px;padding:14px 16px;margin-bottom:16px}
table{border-collapse:collapse;width:100%}th,td{padding:3px 8px;text-align:right;border-bottom:1px solid #eef1f5}
th:first-child,td:first-child{text-align:left}th{font-weight:600;color:#424b59}
td.num{font-variant-numeric:tabular-nums}
.facts{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:2px 14px}.facts dt{color:#5b6472}
.facts dd{margin:0;overflow-wrap:anywhere}
pre{background:#f6f8fa;border:1px solid #e4e8ee;border-radius:6px;padding:10px;overflow:auto;font-size:12px}
.warn{background:#fff8e1;border-color:#f0c36d}.warn li{margin:4px 0}
.bar{background:#e8edf4;height:10px;border-radius:3px;min-width:120px}
.bar span{display:block;height:10px;background:#1f6fd1;border-radius:3px}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:5px}
.note{color:#5b6472;font-size:12px;margin:6px 0 0}
svg text{font:11px system-ui,sans-serif;fill:#424b59}
"""


@dataclass(frozen=True)
class Axis:
    """Maps data values onto a pixel range, linearly or in log10."""

    lo: float
    hi: float
    start: float
    end: float
    log: bool = False
    integer: bool = False  # ticks at whole numbers only (iterations)

    def __call__(self, value: float) -> float:
        f = (math.log10(value), math.log10(self.lo), math.log10(self.hi)) if self.log else (value, self.lo, self.hi)
        span = f[2] - f[1] or 1.0
        return self.start + (f[0] - f[1]) / span * (self.end - self.start)

    def ticks(self) -> list[float]:
        if self.log:
            first, last = math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi))
            step = max(1, math.ceil((last - first) / 6))
            return [10.0**e for e in range(first, last + 1, step) if self.lo <= 10.0**e <= self.hi]
        raw = (self.hi - self.lo) / 5 or 1.0
        magnitude = 10 ** math.floor(math.log10(raw))
        step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
        step = max(1, round(step)) if self.integer else step
        first = math.ceil(self.lo / step) * step
        return [first + i * step for i in range(int((self.hi - first) / step + 1e-9) + 1)]


def _axis(values: Sequence[float], start: float, end: float, log: bool, pad: float = 0.05) -> Axis:
    lo, hi = min(values), max(values)
    if log:
        lo, hi = (lo / 1.5, hi * 1.5) if lo == hi else (lo, hi)
        return Axis(10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi)), start, end, True)
    if lo == hi:
        lo, hi = lo - (abs(lo) or 1) * 0.5, hi + (abs(hi) or 1) * 0.5
    margin = (hi - lo) * pad
    return Axis(lo - margin, hi + margin, start, end)


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-2:
        return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{value:.3g}"


def _frame(x: Axis | None, y: Axis, x_title: str, y_title: str, body: str, title: str) -> str:
    """Axes, grid, tick labels (none on x without ``x``) and titles around ``body``; ``title`` is the chart's
    accessible name."""
    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" aria-label="{escape(title)}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for t in y.ticks():
        py = y(t)
        parts.append(
            f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{py:.1f}" y2="{py:.1f}" stroke="#eef1f5"/>'
            f'<text x="{MARGIN_LEFT - 6}" y="{py + 4:.1f}" text-anchor="end">{_label(t)}</text>'
        )
    for px, t in [(x(t), t) for t in x.ticks()] if x else []:
        parts.append(f'<text x="{px:.1f}" y="{HEIGHT - MARGIN_BOTTOM + 16}" text-anchor="middle">{_label(t)}</text>')
    bottom = HEIGHT - MARGIN_BOTTOM
    parts.append(
        f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{bottom}" y2="{bottom}" stroke="#9aa3af"/>'
        f'<line x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT}" y1="{MARGIN_TOP}" y2="{bottom}" stroke="#9aa3af"/>'
        f'<text x="{(MARGIN_LEFT + WIDTH - MARGIN_RIGHT) / 2}" y="{HEIGHT - 8}" text-anchor="middle">'
        f"{escape(x_title)}</text>"
        f'<text transform="translate(14 {(MARGIN_TOP + bottom) / 2}) rotate(-90)" text-anchor="middle">'
        f"{escape(y_title)}</text>"
    )
    parts.append(body)
    parts.append("</svg>")
    return "".join(parts)


def _plot_area(x_values: Sequence[float], y_values: Sequence[float], log_x: bool, log_y: bool) -> tuple[Axis, Axis]:
    x = _axis(x_values, MARGIN_LEFT, WIDTH - MARGIN_RIGHT, log_x, pad=0.02)
    y = _axis(y_values, HEIGHT - MARGIN_BOTTOM, MARGIN_TOP, log_y)
    return x, y


def residual_chart(history: Sequence[float], tolerance: float | None) -> str:
    """The solver's relative residual against iterations (log scale), with the tolerance it stops at."""
    points = [(i + 1, r) for i, r in enumerate(history) if math.isfinite(r) and r > 0]
    if not points:
        return '<p class="note">The solver recorded no residuals (the first-order ablation solves nothing).</p>'
    ys = [r for _, r in points] + ([tolerance] if tolerance else [])
    x, y = _plot_area([1.0, float(max(len(history), 2))], ys, False, True)
    x = Axis(x.lo, x.hi, x.start, x.end, integer=True)
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(i_):.1f},{y(r):.1f}" for i, (i_, r) in enumerate(points))
    body = f'<path d="{path}" fill="none" stroke="{COLOURS["after"]}" stroke-width="2"/>'
    body += "".join(f'<circle cx="{x(i):.1f}" cy="{y(r):.1f}" r="2.5" fill="{COLOURS["after"]}"/>' for i, r in points)
    if tolerance:
        ty = y(tolerance)
        body += (
            f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#c0392b" '
            f'stroke-dasharray="5 4"/><text x="{WIDTH - MARGIN_RIGHT - 4}" y="{ty - 5:.1f}" text-anchor="end" '
            f'style="fill:#c0392b">tolerance {_label(tolerance)}</text>'
        )
    return _frame(x, y, "iteration", "relative residual", body, "Solver residual against iterations")


def step_chart(trace: Sequence[tuple[float, float | None]], chosen: float) -> str:
    """The step search's objective against the scale (log scale), the chosen step marked; scales whose objective
    was not finite are left out and counted."""
    points = sorted((s, v) for s, v in trace if s > 0 and v is not None and math.isfinite(v))
    if not points:
        return '<p class="note">The step was fixed; no search ran.</p>'
    x, y = _plot_area([s for s, _ in points], [v for _, v in points], True, False)
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(s):.1f},{y(v):.1f}" for i, (s, v) in enumerate(points))
    body = f'<path d="{path}" fill="none" stroke="{COLOURS["before"]}" stroke-width="1.5"/>'
    body += "".join(f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="3" fill="{COLOURS["after"]}"/>' for s, v in points)
    best = [(s, v) for s, v in points if s == chosen]
    if best:
        bx, by = x(best[0][0]), y(best[0][1])
        body += (
            f'<circle cx="{bx:.1f}" cy="{by:.1f}" r="7" fill="none" stroke="#c0392b" stroke-width="2.5"/>'
            f'<text x="{bx:.1f}" y="{by - 12:.1f}" text-anchor="middle" style="fill:#c0392b">'
            f"chosen s = {_label(chosen)}</text>"
        )
    unedited = [v for s, v in trace if s == 0 and v is not None]
    note = f" Unedited (s = 0): {unedited[0]:.4g}." if unedited else ""
    if dropped := sum(1 for s, v in trace if s > 0 and v is None):
        note += f" {dropped} scales gave a non-finite objective (the edited outputs overflowed); not drawn."
    return (
        _frame(x, y, "step scale s", "objective (higher is better)", body, "Step search objective against scale")
        + f'<p class="note">{len(trace)} evaluations on validation data.{escape(note)}</p>'
    )


def class_chart(columns: Mapping[str, Mapping[str, float]], highlighted: set[str]) -> str:
    """Accuracy per class, one bar per model (before / after / retrained), highlighted classes in red."""
    classes = sorted({c for values in columns.values() for c in values}, key=lambda c: (len(c), c))
    if not classes:
        return '<p class="note">No per-class accuracy was measured.</p>'
    y = Axis(0.0, 1.0, HEIGHT - MARGIN_BOTTOM, MARGIN_TOP)
    left_edge = MARGIN_LEFT
    slot = (WIDTH - MARGIN_RIGHT - MARGIN_LEFT) / len(classes)
    bar = slot * 0.8 / max(len(columns), 1)
    body = []
    for i, c in enumerate(classes):
        for j, (name, values) in enumerate(columns.items()):
            value = values.get(c)
            if value is None or not math.isfinite(value):
                continue
            left, top = left_edge + i * slot + slot * 0.1 + j * bar, y(value)
            body.append(
                f'<rect x="{left:.1f}" y="{top:.1f}" width="{bar:.1f}" height="{y.start - top:.1f}" '
                f'fill="{COLOURS[name]}"><title>class {escape(c)}, {name}: {value:.4f}</title></rect>'
            )
        style = ' style="fill:#c0392b;font-weight:700"' if c in highlighted else ""
        body.append(
            f'<text x="{left_edge + (i + 0.5) * slot:.1f}" y="{y.start + 16}" text-anchor="middle"{style}>'
            f"{escape(c)}</text>"
        )
    return _frame(None, y, "class", "accuracy", "".join(body), "Accuracy per class")


def loss_chart(membership: Membership) -> str:
    """The edited model's loss distributions (share of each set per log-spaced bin) on the removed, the held-out and
    the retained examples, with the removed examples' before the edit dashed: where the removed examples' curve lies
    is what the membership attack sees."""
    histogram = membership.histogram
    if histogram is None:
        return ""
    series = {
        "removed, before the edit": histogram.removed_before,
        "held-out": histogram.heldout,
        "retained": histogram.retained,
        "removed": histogram.removed,
    }
    shares = {name: [c / max(sum(counts), 1) for c in counts] for name, counts in series.items()}
    x = _axis(histogram.edges, MARGIN_LEFT, WIDTH - MARGIN_RIGHT, log=True)
    y = Axis(0.0, max(max(v) for v in shares.values()) * 1.05 or 1.0, HEIGHT - MARGIN_BOTTOM, MARGIN_TOP)
    body = []
    for name, values in shares.items():
        edges = histogram.edges
        steps = "".join(f"L{x(edges[i]):.1f},{y(v):.1f}L{x(edges[i + 1]):.1f},{y(v):.1f}" for i, v in enumerate(values))
        dash = ' stroke-dasharray="5 4"' if name.endswith("before the edit") else ""
        body.append(
            f'<path d="M{x(edges[0]):.1f},{y(0):.1f}{steps}L{x(edges[-1]):.1f},{y(0):.1f}" fill="none" '
            f'stroke="{COLOURS[name]}" stroke-width="2"{dash}><title>{escape(name)}</title></path>'
        )
    return _frame(
        x, y, "per-example loss (cross-entropy)", "share of examples", "".join(body), "Loss distributions"
    ) + _legend(list(series))


def _membership_section(result: EditResult) -> str:
    """The membership verdict, its AUCs before and after the edit, and the loss distributions behind them."""
    membership = result.membership
    if membership is None:
        if result.request == "relabel":
            return '<p class="note">A relabel removes no examples: there is no membership verdict.</p>'
        return '<p class="note">This result predates the membership verdict.</p>'
    verdict = f"<p><strong>{escape(membership.verdict)}</strong></p>"
    if membership.status == "not_judged":
        return verdict

    def auc(value: float | None, interval: tuple[float, float] | None) -> str:
        if value is None:
            return "<td>–</td>"
        return (
            f'<td class="num">{value:.3f}' + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "") + "</td>"
        )

    before = membership.before or AttackAucs()
    rows = "".join(
        f"<tr><td>{name}</td>{auc(*then)}{auc(*now)}</tr>"
        for name, then, now in (
            ("removed vs held-out", before.removed, membership.removed),
            ("retained vs held-out", before.retained, membership.retained),
        )
    )
    table = (
        "<table><thead><tr><th>loss-threshold attack AUC</th><th>before</th><th>after</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )
    counts = ", ".join(f"{n:,} {name.replace('_', ' ')}" for name, n in membership.samples.items())
    note = (
        f'<p class="note">AUC: the chance that a removed (retained) example has a lower loss than a held-out one, '
        f"ties half; 0.5 = indistinguishable; 95% bootstrap intervals. Held-out examples from the "
        f"{escape(membership.heldout or '')} data; examples compared: {escape(counts)}.</p>"
    )
    return verdict + table + note + loss_chart(membership)


def _durability_section(result: EditResult) -> str:
    """The durability verdict and the forgotten quantity after each check, beside its value before and after."""
    durability = result.durability
    if durability is None:
        return '<p class="note">No durability check ran (durability off, or nothing forgotten to re-measure).</p>'

    def cell(value: float | None) -> str:
        return f'<td class="num">{value:.3f}</td>' if value is not None else "<td>–</td>"

    rows = f"<tr><td>before the edit</td>{cell(durability.before)}<td></td></tr>"
    rows += f"<tr><td>after the edit</td>{cell(durability.after)}<td></td></tr>"
    for check in durability.checks:
        came_back = f"{check.recovered:.0%} back" if check.recovered is not None else escape(check.error or "–")
        rows += f"<tr><td>after {escape(check.name)}</td>{cell(check.value)}<td>{came_back}</td></tr>"
    return (
        f"<p><strong>{escape(durability.verdict)}</strong></p><table><thead><tr><th></th>"
        f"<th>{escape(durability.metric)}</th><th>of the edit's effect</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _training_section(result: EditResult) -> str:
    """A training method's learning rates: each one's best checkpoint, the kept one marked (the step search's
    place for fine_tune and neg_grad_plus)."""
    training = result.training
    assert training is not None

    def objective(value: float | None) -> str:
        return f'<td class="num">{value:.4f}</td>' if value is not None else "<td>–</td>"

    rows = f"<tr><td>unedited</td><td></td><td></td>{objective(training.unedited_objective)}<td></td></tr>"
    for c in training.candidates:
        kept = " (kept)" if c.learning_rate == training.learning_rate else ""
        rows += (
            f"<tr><td>lr {c.learning_rate:g}{kept}</td><td class='num'>{c.steps}</td>"
            f"<td class='num'>{c.best_step if c.best_step is not None else '–'}</td>{objective(c.objective)}"
            f"<td>{escape(c.stopped or '')}</td></tr>"
        )
    return (
        "<table><thead><tr><th>learning rate</th><th>steps</th><th>best checkpoint</th><th>objective</th><th></th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
        f'<p class="note">{result.step.evaluations} checkpoints scored on validation data; the best of all is kept, '
        "the unedited model included.</p>"
    )


COMPARED_METRICS = (
    "forget_accuracy",
    "forget_test_accuracy",
    "relabel_accuracy",
    "heldout_attack_success_rate",
    "retain_accuracy",
    "test_accuracy",
)


def objective_chart(comparison: Sequence[MethodComparison]) -> str:
    """Each compared method's validation objective as a bar from zero (the chosen one red, its name bold; a method
    whose objective was not finite has none, and its name says so)."""
    values = [c.objective for c in comparison if c.objective is not None and math.isfinite(c.objective)]
    if not values:
        return '<p class="note">No method had a finite validation objective.</p>'
    y = _axis([0.0, *values], HEIGHT - MARGIN_BOTTOM, MARGIN_TOP, log=False)
    slot = (WIDTH - MARGIN_RIGHT - MARGIN_LEFT) / len(comparison)
    body = []
    for i, c in enumerate(comparison):
        centre = MARGIN_LEFT + (i + 0.5) * slot
        if c.objective is not None and math.isfinite(c.objective):
            top, bottom = sorted((y(c.objective), y(0.0)))
            colour = "#c0392b" if c.chosen else COLOURS["after"]
            body.append(
                f'<rect x="{centre - slot * 0.3:.1f}" y="{top:.1f}" width="{slot * 0.6:.1f}" '
                f'height="{max(bottom - top, 1.0):.1f}" fill="{colour}"><title>{escape(c.method)}: '
                f"{c.objective:.6g}</title></rect>"
            )
        name = c.method + ("" if c.objective is not None else " (–)")
        style = ' style="fill:#c0392b;font-weight:700"' if c.chosen else ""
        label_y = HEIGHT - MARGIN_BOTTOM + 16
        body.append(f'<text x="{centre:.1f}" y="{label_y}" text-anchor="middle"{style}>{escape(name)}</text>')
    return _frame(
        None, y, "method", "validation objective (higher is better)", "".join(body), "Validation objective per method"
    )


def _comparison_section(result: EditResult) -> str:
    """A job of several methods: each one's validation objective, metrics after, membership, durability and cost,
    the chosen one marked, and the objective as bars."""
    comparison = result.comparison or []
    keys = [k for k in COMPARED_METRICS if any(k in c.metrics for c in comparison)]

    def number(value: float | None, digits: int = 4) -> str:
        return f'<td class="num">{value:.{digits}f}</td>' if value is not None else "<td>–</td>"

    rows = []
    for c in comparison:
        membership = "–"
        if c.membership is not None:
            auc = c.membership.forget_vs_heldout_auc
            membership = (f"{auc:.3f} " if auc is not None else "") + c.membership.status.replace("_", " ")
        durability = "–"
        if c.durability is not None:
            back = [check.recovered for check in c.durability.checks if check.recovered is not None]
            durability = ("holds" if c.durability.holds else "does not hold") + (
                f" (at most {max(back):.0%} back)" if back else ""
            )
        objective = f"{c.objective:.6g}" if c.objective is not None else "–"
        rows.append(
            f"<tr><td>{escape(c.method)}</td><td class='num'>{escape(objective)}</td>"
            f"<td>{'chosen' if c.chosen else ''}</td>"
            + "".join(number(c.metrics.get(k)) for k in keys)
            + f"<td>{escape(membership)}</td><td>{escape(durability)}</td>{number(c.timings.total_s, 1)}</tr>"
        )
    head = "".join(f"<th>{escape(k)}</th>" for k in keys)
    table = (
        f"<table><thead><tr><th>method</th><th>validation objective</th><th></th>{head}<th>membership AUC</th>"
        f"<th>durability</th><th>seconds</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    note = f'<p class="note">{escape(result.chosen_by or "")}. Metrics after each edit, on the same data.</p>'
    return table + note + objective_chart(comparison)


def _legend(names: Sequence[str]) -> str:
    items = "".join(f'<span><i style="background:{COLOURS[n]}"></i>{escape(n)}</span>' for n in names)
    return f'<p class="legend note">{items}</p>'


def _metrics_table(metrics: Mapping[str, Mapping[str, float] | None]) -> str:
    columns, keys = metric_columns(metrics)
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    rows = "".join(
        f"<tr><td>{escape(k)}</td>"
        + "".join(f'<td class="num">{v[k]:.4f}</td>' if k in v else "<td>–</td>" for v in columns.values())
        + "</tr>"
        for k in keys
    )
    return f"<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _layers_table(result: EditResult) -> str:
    layers = result.selection.layers
    if not layers:
        return '<p class="note">No layer breakdown was recorded.</p>'
    rows = []
    for layer in layers:
        share = layer.units_selected / layer.units_total if layer.units_total else 0.0
        rows.append(
            f"<tr><td>{escape(layer.module)}</td><td class='num'>{layer.units_selected} / {layer.units_total}</td>"
            f"<td class='num'>{share:.1%}</td><td><div class='bar'><span style='width:{share * 100:.1f}%'></span>"
            f"</div></td><td class='num'>{layer.parameters_selected:,}</td></tr>"
        )
    return (
        "<table><thead><tr><th>layer</th><th>units</th><th>selected</th><th></th><th>parameters</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


HEADLINE_KEYS = ("score", "heldout_attack_success_rate", "attack_success_rate", "forget_accuracy", "test_accuracy")


def _headline(result: EditResult) -> str:
    """The request's main metric before → after (and retrained), for the line under the title."""
    m = result.metrics
    key = next((k for k in HEADLINE_KEYS if k in m.after and k in m.before), None)
    if key is None:
        return ""
    retrained = f" (retrained {m.retrained[key]:.4f})" if m.retrained and key in m.retrained else ""
    return f"{key} {m.before[key]:.4f} → {m.after[key]:.4f}{retrained}"


def _facts(pairs: Sequence[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in pairs) + "</dl>"


def _summary(result: EditResult) -> list[tuple[str, str]]:
    s, step, t = result.solver, result.step, result.timings
    solver = (
        f"{s.kind}: {s.iterations} iterations, {s.hvp_count} Hessian-vector products, relative residual "
        f"{s.relative_residual:.3g}" + ("" if s.converged else " (not converged)")
    )
    if (training := result.training) is not None:
        kept = (
            f"lr {training.learning_rate:g} at step {training.step}" if training.learning_rate else "the unedited model"
        )
        solver = (
            f"SGD, {len(training.candidates)} learning rates × {training.steps_per_candidate} steps (batch "
            f"{training.batch_size}); kept {kept}"
        )
    pairs = [
        ("method", result.method),
        ("request", result.request),
        (
            "selected",
            f"{result.selection.num_selected:,} parameters ({result.selection.modification_ratio:.2%}), "
            f"criterion {result.selection.criterion}",
        ),
        ("training" if training is not None else "solver", solver),
        ("step", f"{step.mode}, s = {step.scale:.4g}" + (f", {step.validation} validation" if step.validation else "")),
        (
            "time",
            f"{t.total_s:.1f} s (selection {t.selection_s:.1f}, solve {t.solve_s:.1f}, step search "
            f"{t.step_search_s:.1f}, evaluation {t.evaluation_s:.1f}"
            + (f", retraining {t.retrain_s:.1f}" if t.retrain_s is not None else "")
            + ")",
        ),
    ]
    if result.data is not None:
        d = result.data
        pairs.append(
            (
                "samples",
                f"{d.train_samples:,} training"
                + (f" (a sample of {d.train_size:,})" if d.train_size is not None else "")
                + f", {d.affected_samples:,} affected, {d.hessian_samples:,} for the Hessian, {d.gradient_samples:,} "
                "for the gradient",
            )
        )
        if d.input_transform is not None:
            pairs.append(("input transform", d.input_transform))
    if result.device is not None:
        pairs.append(("device", f"{result.device.name} ({result.device.type})"))
    if result.checkpoint is not None:
        pairs.append(("checkpoint sha256", result.checkpoint.sha256))
    return pairs


def _step_section(result: EditResult) -> str:
    if result.training is not None:
        return f"<section><h2>Learning-rate search</h2>{_training_section(result)}</section>"
    return f"<section><h2>Step search</h2>{step_chart(result.step.trace, result.step.scale)}</section>"


def _comparison(result: EditResult) -> str:
    if not result.comparison:
        return ""
    return f"<section><h2>Methods compared</h2>{_comparison_section(result)}</section>\n"


def render_report(result: EditResult, spec: Mapping[str, Any], context: Sequence[tuple[str, str]] = ()) -> str:
    """The report page for one edit; ``spec`` is the job specification as submitted, ``context`` extra facts to
    head the page with (the job id, its times, the model)."""
    request = spec.get("request", {})
    removed = {str(c) for c in request.get("classes", [])} if isinstance(request, Mapping) else set()
    accuracy = result.class_accuracy
    class_section = '<p class="note">This result predates per-class accuracy.</p>'
    if accuracy is not None:
        columns = {"before": accuracy.before, "after": accuracy.after}
        if accuracy.retrained:
            columns["retrained"] = accuracy.retrained
        source = "held-out eval data" if accuracy.data == "eval" else "a sample of the retained training data"
        class_section = (
            class_chart(columns, removed)
            + _legend(list(columns))
            + (f'<p class="note">Measured on {source}.' + (" Removed classes in red." if removed else "") + "</p>")
        )
    warnings = "".join(f"<li>{escape(w)}</li>" for w in result.warnings)
    tolerance = spec.get("solver", {}).get("tolerance") if isinstance(spec.get("solver"), Mapping) else None
    title = f"GIF edit: {result.method}, {result.request}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{escape(title)}</title><style>{STYLE}</style></head>
<body><main>
<h1>{escape(title)}</h1>
<p class="sub">{escape(_headline(result))}</p>
{f'<section class="warn"><h2>Warnings</h2><ul>{warnings}</ul></section>' if warnings else ""}
{_comparison(result)}<div class="grid">
<section><h2>Summary</h2>{_facts(list(context) + _summary(result))}</section>
<section><h2>Metrics</h2>{_metrics_table(result.metrics.model_dump())}</section>
<section><h2>Accuracy per class</h2>{class_section}</section>
<section><h2>Solver residual</h2>{residual_chart(result.solver.residual_history, tolerance)}</section>
{_step_section(result)}
<section><h2>Membership</h2>{_membership_section(result)}</section>
<section><h2>Durability</h2>{_durability_section(result)}</section>
<section><h2>Selected units per layer</h2>{_layers_table(result)}</section>
</div>
<section><h2>Request and settings</h2><pre>{escape(json.dumps(spec, indent=2, sort_keys=True))}</pre></section>
</main></body></html>
"""
