"""Every txgate metric, declared once (docs/protocol.md §6). Names and labels are a public contract:
dashboards and alerts depend on them. Label values are bounded: routes and rule ids come from
configuration and loaded rules, never from request data."""

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

DECISIONS = ("allow", "review", "step_up", "deny", "error")
STEPUP_METHODS = ("otp", "device")
STEPUP_OUTCOMES = ("issued", "passed", "failed", "reused", "expired", "locked", "limited")
RELOAD_OUTCOMES = ("success", "failure")
# gateway.forward's error codes without their "upstream_" prefix, plus "stream" (the answer broke
# after its status line was sent).
UPSTREAM_ERROR_KINDS = ("timeout", "unavailable", "stream")
DECISION_LOG_SINKS = ("file", "redis_stream", "queue")
UNMATCHED_ROUTE = "_unmatched"   # the one route label of requests that matched no route

# Gateway overhead is sub-millisecond when healthy: resolve it finely.
_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_UPSTREAM_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SCORE_BUCKETS = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 150, 200)

REQUESTS = Counter("txgate_requests", "Decided requests by route and outcome", ["route", "decision"])
RULE_HITS = Counter("txgate_rule_hits", "Rule matches", ["rule", "action", "mode"])
STEPUP = Counter("txgate_stepup", "Step-up challenges by method and outcome", ["method", "outcome"])
AUTH_FAILURES = Counter("txgate_auth_failures", "Refused client authentications by reason", ["reason"])
RISK_SCORE = Histogram("txgate_risk_score", "Total risk score per decided request", ["route"],
                       buckets=_SCORE_BUCKETS)
OVERHEAD = Histogram("txgate_overhead_seconds", "Time spent in the gateway, upstream excluded",
                     ["route"], buckets=_FAST_BUCKETS)
UPSTREAM_DURATION = Histogram("txgate_upstream_duration_seconds",
                              "Upstream time to response headers", ["route"],
                              buckets=_UPSTREAM_BUCKETS)
UPSTREAM_ERRORS = Counter("txgate_upstream_errors", "Upstream failures", ["route", "kind"])
CLIENT_STALLED = Counter("txgate_client_stalled", "Answers cut off because the client stopped "
                         "reading (no progress for limits.client_timeout_s)", ["route"])
STATE_ERRORS = Counter("txgate_state_errors", "State store failures by operation", ["operation"])
FAIL_OPEN = Counter("txgate_fail_open", "Requests decided without shared state (fail_open/local)",
                    ["route", "policy"])
RULES_RELOADS = Counter("txgate_rules_reloads", "Rule reloads by outcome", ["outcome"])
CHALLENGER_RELOADS = Counter("txgate_challenger_reloads",
                             "Challenger rule set loads and reloads by outcome", ["outcome"])
# Champion/challenger (rules.challenger): the champion's decision as txgate_requests_total has
# it, the challenger's as the gateway would have made it; both from DECISIONS.
CHALLENGER_DECISIONS = Counter("txgate_challenger_decisions",
                               "Decided requests by route, champion decision and challenger decision",
                               ["route", "champion", "challenger"])
RATES_RELOADS = Counter("txgate_rates_reloads", "Exchange-rate file reloads by outcome", ["outcome"])
# With workers, "liveall" gives one series per live worker (an extra pid label), so a reload
# rolling through the workers is visible and a dead worker's series disappear with
# mark_process_dead. Aggregate with max by (version, rules), never sum: sum would read N.
# A retired set is zeroed by each worker, since label sets cannot be removed across processes.
RULES_INFO = Gauge("txgate_rules_info", "The loaded rule set", ["version", "rules"],
                   multiprocess_mode="liveall")
DECISION_LOG_ERRORS = Counter("txgate_decision_log_errors",
                              "Decision log records that a sink failed to write", ["sink"])
BAD_REQUESTS = Counter("txgate_bad_requests", "Refused malformed requests by error code",
                       ["route", "error"])
# Live lists (gateway.lists): label values are the live lists the loaded rules declare and the
# admin API's own error codes, never request data.
LIST_CHANGES = Counter("txgate_list_changes", "Live-list members added or removed by the admin API",
                       ["list", "action"])
LIST_REFUSED = Counter("txgate_list_refused", "Refused live-list changes and reads by error code",
                       ["error"])


def precreate(routes: Mapping[str, str]) -> None:
    """Create, at zero, every label set that dashboards and alerts divide by or take rates of.

    ``routes`` maps each configured route name to its ``on_state_error`` policy. A series that
    first appears at 1 hides that first event from rate() and increase(), and a quiet gateway
    would show "No data" instead of 0. Label sets that depend on request data (rule ids come
    with the loaded rules, state operations and auth-failure reasons with the code paths) are
    created on first use.
    """
    for route in (*routes, UNMATCHED_ROUTE):
        for decision in DECISIONS:
            REQUESTS.labels(route, decision)
        OVERHEAD.labels(route)
    for route, policy in routes.items():
        RISK_SCORE.labels(route)
        UPSTREAM_DURATION.labels(route)
        for kind in UPSTREAM_ERROR_KINDS:
            UPSTREAM_ERRORS.labels(route, kind)
        CLIENT_STALLED.labels(route)
        if policy != "fail_closed":   # only these routes can ever decide without shared state
            FAIL_OPEN.labels(route, policy)
    for method in STEPUP_METHODS:
        for outcome in STEPUP_OUTCOMES:
            STEPUP.labels(method, outcome)
    for outcome in RELOAD_OUTCOMES:
        RULES_RELOADS.labels(outcome)
        CHALLENGER_RELOADS.labels(outcome)
        RATES_RELOADS.labels(outcome)
    # An unconfigured sink stays at zero, which is true: it never failed.
    for sink in DECISION_LOG_SINKS:
        DECISION_LOG_ERRORS.labels(sink)
