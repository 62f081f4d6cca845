"""The pack evaluation harness runs (its figures are in docs/rules.md, made by make pack-eval)."""
import io
from pathlib import Path

from bench.pack_eval import ATTACKS, evaluate, report

ROOT = Path(__file__).resolve().parents[2]


def test_a_small_evaluation_decides_every_payment_and_reports_every_pattern():
    result = evaluate(ROOT / "rules" / "default", ROOT / "examples" / "txgate.yaml", users=40, seed=3)
    table = result["table"]
    assert table["genuine"]["payments"] > 500
    assert all(table[kind]["payments"] > 0 for kind in ATTACKS if kind in table)
    assert sum(row["error"] for row in table.values()) == 0
    # The shipped pack stops the takeovers and steps up few genuine payments, as documented.
    assert table["account takeover"]["stopped"] == table["account takeover"]["payments"]
    assert table["genuine"]["stepped up"] <= 0.02 * table["genuine"]["payments"]
    out = io.StringIO()
    report(result, out)
    assert out.getvalue().startswith("| traffic | payments | stopped | stepped up | denied |")
