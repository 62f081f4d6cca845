"""`rules replay --html FILE`: one self-contained page (plotly's JavaScript inlined, no CDN, works
offline) with the per-rule table and three plots: precision and recall per rule, the candidate's
risk-score distribution of fraud vs genuine with the thresholds marked, decisions before → after."""
from __future__ import annotations

import html
from collections import Counter

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from rules.decision import ACTIONS
from rules.outcomes import Outcomes
from rules.replay import ReplayReport

_ORDER = ("allow", "review", "step_up", "require_otp", "require_device", "deny")


def write_html(path, report: ReplayReport, outcomes: Outcomes, thresholds: dict[str, float],
               candidate_version: str) -> None:
    parts = [_summary(report, outcomes, candidate_version), _table(outcomes)]
    figures = [_decisions(report)]
    if outcomes.labels is not None:
        figures = [_precision_recall(outcomes), _scores(report, outcomes, thresholds)] + figures
    parts += [pio.to_html(f, full_html=False, include_plotlyjs=False) for f in figures]
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>txgate replay</title>"
            f"<script>{get_plotlyjs()}</script><style>{_CSS}</style></head><body>"
            + "".join(parts) + "</body></html>")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)


_CSS = ("body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
        "td:first-child{text-align:left}")


def _summary(report: ReplayReport, outcomes: Outcomes, version: str) -> str:
    changed = sum(tx.changed for tx in report.transactions)
    logged = ", ".join(f"{v} ({n})" for v, n in report.versions.most_common())
    lines = [f"{report.compared} transactions from {report.records} records; logged rules "
             f"{logged} → candidate {version}; {changed} decisions change",
             "step-ups (logged): " + ", ".join(f"{n} {o}" for o, n in outcomes.step_up.items())]
    if outcomes.labels is not None:
        for name, m in outcomes.sets.items():
            lines.append(f"{name}: precision {_pct(m['precision'])}, recall {_pct(m['recall'])}, "
                         f"recall by amount {_pct(m['recall_amount'])}, genuine stopped "
                         f"{m['genuine_stopped']} ({m['genuine_amount_stopped']:.2f})")
    return "<h1>txgate rules replay</h1>" + "".join(f"<p>{html.escape(x)}</p>" for x in lines)


def _table(outcomes: Outcomes) -> str:
    labelled = outcomes.labels is not None
    head = ["rule", "hits before", "hits after", "passed", "failed", "abandoned", "pending"]
    if labelled:
        head += [f"{w} {s}" for s in ("logged", "candidate")
                 for w in ("TP", "FP", "precision", "recall", "recall €")]
    rows = []
    for rid, e in outcomes.rules.items():
        cells = [rid, e["logged"]["hits"], e["candidate"]["hits"], *e["step_up"].values()]
        if labelled:
            for s in ("logged", "candidate"):
                m = e[s]
                cells += [m["tp"], m["fp"], _pct(m["precision"]), _pct(m["recall"]),
                          _pct(m["recall_amount"])]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<h2>Rules</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + "</tr>" + "".join(rows) + "</table>")


def _precision_recall(outcomes: Outcomes) -> go.Figure:
    ids = list(outcomes.rules)
    fig = go.Figure()
    for s in ("logged", "candidate"):
        for metric in ("precision", "recall"):
            fig.add_bar(name=f"{metric} ({s})", x=ids,
                        y=[outcomes.rules[r][s][metric] for r in ids])
    fig.update_layout(title="Precision and recall per rule", barmode="group",
                      yaxis={"tickformat": ".0%", "range": [0, 1]})
    return fig


def _scores(report: ReplayReport, outcomes: Outcomes, thresholds: dict[str, float]) -> go.Figure:
    fig = go.Figure()
    for cls in ("genuine", "fraud"):
        fig.add_histogram(name=cls, opacity=0.6,
                          x=[tx.after_score for tx in report.transactions
                             if outcomes.classes.get(id(tx), (None,))[0] == cls])
    for action, limit in sorted(thresholds.items(), key=lambda kv: kv[1]):
        fig.add_vline(x=limit, line_dash="dash", annotation_text=action)
    fig.update_layout(title="Candidate risk score: fraud vs genuine (thresholds dashed)",
                      barmode="overlay", xaxis_title="score", yaxis_title="transactions")
    return fig


def _decisions(report: ReplayReport) -> go.Figure:
    pairs = Counter((tx.before, tx.after) for tx in report.transactions)
    before = [a for a in _ORDER if any(p[0] == a for p in pairs)]
    after = [a for a in ACTIONS if any(p[1] == a for p in pairs)]
    z = [[pairs.get((b, a), 0) for a in after] for b in before]
    fig = go.Figure(go.Heatmap(z=z, x=after, y=before, text=z, texttemplate="%{text}",
                               colorscale="Blues"))
    fig.update_layout(title="Decisions: logged (rows) → candidate (columns)",
                      xaxis_title="candidate", yaxis_title="logged")
    return fig


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"
