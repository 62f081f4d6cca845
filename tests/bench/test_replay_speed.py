"""The replay benchmark runs (it broke once unnoticed: nothing ran it): a small generated log,
replayed with and without --recompute. Prints only; nothing here is timed."""

from __future__ import annotations

import tempfile

from bench import replay_speed


def test_the_replay_benchmark_generates_a_log_and_replays_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert replay_speed.main(["600"]) == 0
    assert replay_speed.main(["600", "--recompute"]) == 0
    out = capsys.readouterr().out
    assert out.count("replayed ") == 2 and "replay --recompute: 600 records" in out
    mix = next(line for line in out.splitlines() if line.startswith("logged decisions: "))
    assert "allow" in mix and "step_up" in mix   # customers with habits, and some step-ups
    # One log, made once and replayed twice.
    assert [p.name for p in tmp_path.iterdir()] == ["txgate-bench-decisions-600.jsonl"]
