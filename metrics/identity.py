"""Scrape-time metrics that no counter file can hold: what is running, where, and what the
shared store says about keys.

``txgate_build_info`` names the version, the Python and the rule set of the process that
answers the scrape. Under ``--workers`` prometheus-client's multiprocess mode drops the
``process_*`` and ``python_*`` collectors (they read the scraping process only), so
``WorkerProcesses`` reads ``/proc`` for the supervisor and each of its workers and exposes
the ``process_*`` families once per process with a ``pid`` label: memory and file descriptors
per worker, which a sum would blur (sum them in PromQL when you want the total).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class BuildInfo(Collector):
    def __init__(self, version: str, rules_version: Callable[[], str | None]):
        self._version = version
        self._rules_version = rules_version

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("txgate_build_info",
                                 "The running txgate: version, Python and rule-set version",
                                 labels=["version", "python", "rules_version"])
        info.add_metric([self._version, platform.python_version(),
                         self._rules_version() or ""], 1)
        yield info


def _children(parent: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                # The command name may hold spaces and parentheses: fields follow the last ")".
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:   # gone meanwhile
            continue
        if int(fields[1]) == parent:
            pids.append(int(entry.name))
    return sorted(pids)


class WorkerProcesses(Collector):
    """``process_*`` for the supervisor ``supervisor_pid`` and its workers, labelled ``pid``;
    ``python_info`` once (every worker runs the same interpreter)."""

    def __init__(self, supervisor_pid: int):
        self._supervisor = supervisor_pid

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for pid in (self._supervisor, *_children(self._supervisor)):
            reader = ProcessCollector(pid=lambda pid=pid: pid, registry=None)
            for metric in reader.collect():
                family = families.setdefault(metric.name, Metric(metric.name,
                                                                 metric.documentation,
                                                                 metric.type))
                for sample in metric.samples:
                    family.add_sample(sample.name, {**sample.labels, "pid": str(pid)},
                                      sample.value)
        yield from families.values()
        yield from PlatformCollector(registry=None).collect()


KEY_EXPIRY_WARNING_S = 14 * 86400      # txgate_client_keys_expiring looks this far ahead


class _Collected(Collector):
    """A collector answering metric families computed beforehand."""

    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def expiring_keys_registry(counts: dict[str, int]) -> CollectorRegistry:
    """``txgate_client_keys_expiring{client}`` from counts read from the store at scrape time
    (a one-off registry: a Gauge would write worker files under PROMETHEUS_MULTIPROC_DIR)."""
    family = GaugeMetricFamily("txgate_client_keys_expiring", "Active keys of each client "
                               "expiring within 14 days (or expired, not yet revoked)",
                               labels=["client"])
    for client, count in sorted(counts.items()):
        family.add_metric([client], count)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected([family]))
    return registry
