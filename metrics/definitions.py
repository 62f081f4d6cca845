"""Every txgate metric, declared once (interface §6). Names and labels are a public contract:
dashboards and alerts depend on them. Label values are bounded: routes and rule ids come from
configuration and loaded rules, never from request data."""

from prometheus_client import Counter, Gauge, Histogram

DECISIONS = ("allow", "review", "step_up", "deny", "error")
STEPUP_METHODS = ("otp", "device")
STEPUP_OUTCOMES = ("issued", "passed", "failed", "expired", "locked")

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
STATE_ERRORS = Counter("txgate_state_errors", "State store failures by operation", ["operation"])
FAIL_OPEN = Counter("txgate_fail_open", "Requests decided without shared state (fail_open/local)",
                    ["route", "policy"])
RULES_RELOADS = Counter("txgate_rules_reloads", "Rule reloads by outcome", ["outcome"])
RULES_INFO = Gauge("txgate_rules_info", "The loaded rule set", ["version", "rules"],
                   multiprocess_mode="liveall")
DECISION_LOG_ERRORS = Counter("txgate_decision_log_errors",
                              "Decision log records that a sink failed to write", ["sink"])
BAD_REQUESTS = Counter("txgate_bad_requests", "Refused malformed requests by error code",
                       ["route", "error"])
