"""The drift report: one folder a person opens in a browser — index.html first sentence, PNG charts, no scripts.

    render_report(history, out_dir) → out_dir/index.html, with beside it
        hist-NN.png       per drifted feature, worst first, up to 12 (else the three nearest their thresholds):
                          reference and current histograms overlaid
        statistics.png    every feature's statistic as a multiple of its threshold (1 = the line)
        predictions.png   predicted-class shares, reference against current (when predictions came)
        timeline.png      the cohort's drifted share across its checks, triggers marked
        manifest.json     the file names, so a client can fetch the folder without parsing HTML

The last check of `history` is the one reported on; the earlier ones draw the timeline. Charts are
drawn from what a DriftCheck keeps (binned histograms, class counts), so a report can be rendered
any time from the monitor's stored history without the raw samples. Links are relative and
nothing is fetched from elsewhere: the folder can be zipped, mailed or served as it is.

matplotlib's object API only (Figure, no pyplot): no global figure state, safe in the API's
threadpool.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .monitor import DriftCheck, severity

__all__ = ["render_report"]

_REF, _CUR = "#4c72b0", "#dd8452"  # reference blue, current orange, in every chart
MAX_HISTOGRAMS = 12  # the worst drifted features get a histogram each; the statistics chart shows all


def _when(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: Path) -> str:
    fig.savefig(path, format="png", metadata={"Software": None})
    return path.name


def _histogram_png(check: DriftCheck, feature: str, path: Path) -> str:
    h = check.histograms[feature]
    edges = np.asarray(h.edges)
    ref = np.asarray(h.reference, float)
    cur = np.asarray(h.current, float)
    fig = _figure(5.0, 2.8)
    ax = fig.add_subplot()
    widths = np.diff(edges)
    for counts, colour, label in ((ref, _REF, f"reference ({check.n_reference:,})"),
                                  (cur, _CUR, f"current ({check.n_current:,})")):
        share = counts / counts.sum() if counts.sum() else counts
        ax.bar(edges[:-1], share, width=widths, align="edge", alpha=0.55, color=colour, label=label)
    f = next(x for x in check.features if x.column == feature)
    verdict = "drifted" if f.drifted else "not drifted"
    ax.set_title(f"{feature}: {verdict} ({f.method.value} {f.statistic:.3g}, threshold {f.threshold:g})", fontsize=9)
    ax.set_ylabel("share of windows")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _statistics_png(check: DriftCheck, path: Path) -> str:
    feats = sorted(check.features, key=severity)
    fig = _figure(6.0, 0.28 * len(feats) + 1.2)
    ax = fig.add_subplot()
    values = [severity(f) for f in feats]
    ax.barh([f.column for f in feats], values, color=[_CUR if f.drifted else "#999999" for f in feats])
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("statistic / threshold  (past the dashed line = drifted)")
    ax.tick_params(axis="y", labelsize=8)
    return _save(fig, path)


def _predictions_png(check: DriftCheck, path: Path) -> str:
    p = check.prediction
    assert p is not None
    x = np.arange(len(p.classes))
    ref = np.asarray(p.reference_counts, float)
    cur = np.asarray(p.current_counts, float)
    fig = _figure(5.0, 2.8)
    ax = fig.add_subplot()
    ax.bar(x - 0.2, ref / max(ref.sum(), 1), 0.4, color=_REF, label="reference")
    ax.bar(x + 0.2, cur / max(cur.sum(), 1), 0.4, color=_CUR, label="current")
    ax.set_xticks(x, p.classes)
    ax.set_ylabel("share of predictions")
    ax.set_title(f"Predicted classes: Jensen-Shannon {p.drift.statistic:.3f} (threshold {p.drift.threshold:g})",
                 fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _timeline_png(history: Sequence[DriftCheck], min_share: float, path: Path) -> str:
    done = [c for c in history if c.sufficient]
    fig = _figure(6.0, 2.6)
    ax = fig.add_subplot()
    if done:
        t = [datetime.fromtimestamp(c.at_us / 1e6, timezone.utc) for c in done]
        ax.plot(t, [c.drifted_share for c in done], marker="o", color=_CUR)
        fired = [(ti, c.drifted_share) for ti, c in zip(t, done) if c.trigger is not None]
        if fired:
            ax.scatter(*zip(*fired), s=120, marker="*", color="crimson", zorder=3, label="retraining triggered")
            ax.legend(fontsize=8)
    ax.axhline(min_share, color="black", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("drifted share")
    ax.set_title("Share of features drifted, check by check (dashed: the cohort's threshold)", fontsize=9)
    fig.autofmt_xdate()
    return _save(fig, path)


def _since(history: Sequence[DriftCheck]) -> int:
    """When the current run of over-threshold checks began (the last check's time if it is not over)."""
    at = history[-1].at_us
    for c in reversed(history):
        if not c.sufficient:
            continue
        if not c.over:
            break
        at = c.at_us
    return at


def _headline(history: Sequence[DriftCheck]) -> str:
    c = history[-1]
    if not c.sufficient:
        return f"Cohort {c.cohort}: no verdict at {_when(c.at_us)} — {c.reasons[0]}."
    n, total = len(c.drifted_features), len(c.features)
    if c.over:
        return f"Cohort {c.cohort}: {n} of {total} features drifted since {_when(_since(history))}."
    return f"Cohort {c.cohort}: no drift — {n} of {total} features past their thresholds at {_when(c.at_us)}."


def render_report(history: DriftCheck | Sequence[DriftCheck], out_dir: Path | str, *, min_share: float = 0.25) -> Path:
    """Write the report of `history`'s last check into `out_dir` (created); returns the index.html path."""
    history = [history] if isinstance(history, DriftCheck) else list(history)
    if not history:
        raise ValueError("render_report needs at least one DriftCheck.")
    c = history[-1]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    files: list[str] = []
    body: list[str] = [f"<h1>{esc(_headline(history))}</h1>"]
    body.append(f"<p>Model {esc(c.model)} {esc(c.version)}; state <b>{esc(c.state.value)}</b>; checked "
                f"{c.n_current:,} current windows against {c.n_reference:,} reference windows at {_when(c.at_us)}.</p>")
    if c.trigger is not None:
        body.append(f"<p><b>This check started retraining</b> (trigger {c.trigger.id}).</p>")
    if c.reasons:
        body.append("<ul>" + "".join(f"<li>{esc(r)}</li>" for r in c.reasons) + "</ul>")
    if c.quality_problems:
        body.append("<h2>Left out as quality problems, not drift</h2><ul>" + "".join(
            f"<li>{esc(q.device)}: {esc('; '.join(q.reasons))}</li>" for q in c.quality_problems) + "</ul>")
    if c.features:
        drifted = len(c.drifted_features)
        shown = list(c.top_features(min(drifted, MAX_HISTOGRAMS) if drifted else 3))
        title = (("Drifted features" if drifted <= MAX_HISTOGRAMS else f"The {MAX_HISTOGRAMS} most drifted features")
                 if drifted else "No feature drifted; the three nearest their thresholds")
        body.append(f"<h2>{esc(title)}</h2>")
        for i, feature in enumerate(shown):
            name = _histogram_png(c, feature, out / f"hist-{i:02d}.png")
            files.append(name)
            body.append(f'<img src="{name}" alt="{esc(feature)}: reference and current histograms">')
        files.append(_statistics_png(c, out / "statistics.png"))
        body.append("<h2>Every feature against its threshold</h2>"
                    '<img src="statistics.png" alt="statistic divided by threshold per feature">')
    if c.prediction is not None:
        files.append(_predictions_png(c, out / "predictions.png"))
        body.append('<h2>Predictions</h2><img src="predictions.png" alt="predicted-class shares">')
    if c.concept is not None:
        k = c.concept
        body.append(f"<h2>Accuracy on labelled windows</h2><p>{k.accuracy:.1%} on {k.labelled:,} labelled windows, "
                    f"against {k.reference_accuracy:.1%} on the reference: "
                    f"{'decayed' if k.drifted else 'holding'} (limit: a fall of {k.threshold:.1%}).</p>")
    files.append(_timeline_png(history, min_share, out / "timeline.png"))
    body.append('<h2>Timeline</h2><img src="timeline.png" alt="drifted share per check">')
    if c.features:
        rows = "".join(
            f"<tr{' class=d' if f.drifted else ''}><td>{esc(f.column)}</td><td>{f.method.value}</td>"
            f"<td>{f.statistic:.4g}</td><td>{f.threshold:g}</td><td>{'yes' if f.drifted else 'no'}</td></tr>"
            for f in sorted(c.features, key=lambda f: -severity(f)))
        body.append("<h2>Details</h2><table><tr><th>feature</th><th>method</th><th>statistic</th><th>threshold</th>"
                    f"<th>drifted</th></tr>{rows}</table>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}img{display:block;margin:.5em 0}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em}tr.d{background:#fde8dc}")
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{esc(_headline(history))}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    (out / "index.html").write_text(page, encoding="utf-8")
    (out / "manifest.json").write_text(json.dumps({"files": ["index.html", *files]}), encoding="utf-8")
    return out / "index.html"
