"""`txgate run --workers 2` on a real Redis: /metrics on either worker sums both processes
(prometheus-client multiprocess mode), the rule-set gauge has one series per live worker, and the
multiprocess directory is gone once the gateway exits."""

from __future__ import annotations

import re

import pytest
import requests
from prometheus_client import multiprocess

from tests.fixtures.processes import wait_until
from tests.fixtures.signing import SignedClient

RULES = """
version: 1
rules:
  - {id: W-LARGE, description: large payments are reviewed, when: amount >= 100, action: review}
"""
N = 40


def _sample(text: str, name: str, **labels) -> list[tuple[dict, float]]:
    """Every sample of ``name`` whose labels include ``labels``."""
    found = []
    for match in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(have.get(k) == v for k, v in labels.items()):
            found.append((have, float(match.group(2))))
    return found


def _fresh_scrape(gw) -> str:
    # A new connection each time, so SO_REUSEPORT may hand the scrape to either worker.
    with requests.Session() as session:
        return session.get(f"{gw.admin}/metrics", timeout=5).text


def _per_worker_requests(metrics_dir) -> dict[str, float]:
    """Decided requests counted by each worker, from that worker's own counter file."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = path.stem.removeprefix("counter_")
        merged = multiprocess.MultiProcessCollector.merge([str(path)], accumulate=True)
        counts[pid] = sum(s.value for m in merged if m.name == "txgate_requests"
                          for s in m.samples if s.name == "txgate_requests_total")
    return counts


@pytest.fixture
def workers_gateway(start_gateway, upstream, redis_server, tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "w.yaml").write_text(RULES)
    # The supervisor creates its multiprocess directory under TMPDIR: point it where we can look.
    (tmp_path / "tmp").mkdir()
    gw = start_gateway({
        "state": {"backend": "redis", "url": redis_server.url},
        "rules": {"path": str(tmp_path / "rules"), "reload": "off"},
        "routes": [{"name": "payments", "match": {"path": "/pay"}, "upstream": upstream.url,
                    "transaction": {"user_id": "json:$.user_id", "amount": "json:$.amount",
                                    "currency": "json:$.currency"}}],
    }, workers=2, env={"TMPDIR": str(tmp_path / "tmp")})
    dirs = list((tmp_path / "tmp").glob("txgate-metrics-*"))
    assert len(dirs) == 1, "the supervisor creates one multiprocess directory"
    gw.metrics_dir = dirs[0]
    gw.rules_dir = tmp_path / "rules"
    # /readyz answered from one worker; the other may still be loading its rules (it listens
    # right after), and until then every connection would go to the first.
    wait_until(lambda: len(_sample(_fresh_scrape(gw), "txgate_rules_info")) == 2,
               what="both workers to load the rules")
    return gw


def test_metrics_sum_over_both_workers_and_the_directory_is_removed(workers_gateway):
    gw = workers_gateway
    client = SignedClient("app", gw.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"])
    for i in range(N):
        prepared = client.prepare("POST", f"{gw.url}/pay",
                                  json={"user_id": f"u{i}", "amount": 10, "currency": "EUR"})
        with requests.Session() as fresh:   # one connection per request: spread over workers
            assert fresh.send(prepared, timeout=10).status_code == 200

    per_worker = _per_worker_requests(gw.metrics_dir)
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), per_worker
    assert sum(per_worker.values()) == N

    for _ in range(10):   # whichever worker answers the scrape, the total is the same
        text = _fresh_scrape(gw)
        assert _sample(text, "txgate_requests_total", route="payments", decision="allow") == [
            ({"route": "payments", "decision": "allow"}, float(N))]
        # Pre-created label sets are there at zero in the sum too.
        assert _sample(text, "txgate_requests_total", route="payments", decision="deny")[0][1] == 0
        # One series per live worker (pid label), both on the one loaded rule set.
        info = _sample(text, "txgate_rules_info")
        assert sorted(labels["pid"] for labels, _ in info) == sorted(per_worker)
        assert len({(labels["version"], labels["rules"], value) for labels, value in info}) == 1
        assert info[0][1] == 1.0

    assert gw.stop() == 0
    assert not gw.metrics_dir.exists()


def test_process_metrics_per_worker_and_the_build_info(workers_gateway):
    gw = workers_gateway
    text = _fresh_scrape(gw)
    supervisor = gw.proc.pid
    rss = {int(labels["pid"]): value
           for labels, value in _sample(text, "process_resident_memory_bytes")}
    # The supervisor and its two workers, each with its own memory.
    assert supervisor in rss and len(rss) == 3 and all(value > 0 for value in rss.values())
    for family in ("process_cpu_seconds_total", "process_open_fds", "process_max_fds",
                   "process_start_time_seconds", "process_virtual_memory_bytes"):
        assert {int(labels["pid"]) for labels, _ in _sample(text, family)} == set(rss), family
    assert len(_sample(text, "python_info")) == 1
    [(build, value)] = _sample(text, "txgate_build_info")
    assert value == 1.0 and build["version"] and build["python"]
    assert build["rules_version"] == requests.get(f"{gw.admin}/readyz", timeout=5).json()["rules"]


def test_rules_info_follows_a_reload_on_every_worker(workers_gateway):
    gw = workers_gateway
    before = _sample(_fresh_scrape(gw), "txgate_rules_info")
    assert {value for _, value in before} == {1.0}
    old_version = before[0][0]["version"]
    (gw.rules_dir / "w.yaml").write_text(RULES.replace("amount >= 100", "amount >= 200"))
    assert gw.admin_post("/admin/rules/reload").status_code == 200

    def reloaded_everywhere() -> bool:
        # Each worker zeroes the set it retired and sets the new one: 2 workers x 2 versions.
        info = {(labels["pid"], labels["version"]): value
                for labels, value in _sample(_fresh_scrape(gw), "txgate_rules_info")}
        old = [v for (_, version), v in info.items() if version == old_version]
        new = [v for (_, version), v in info.items() if version != old_version]
        return old == [0.0, 0.0] and new == [1.0, 1.0]
    wait_until(reloaded_everywhere, timeout=10, what="both workers to run the new rule set")
