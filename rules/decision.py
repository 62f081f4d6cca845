"""Actions, hits and how a set of hits becomes one decision."""
from __future__ import annotations

from dataclasses import dataclass

ACTIONS = ("allow", "review", "require_otp", "require_device", "deny")   # severity order
SEVERITY = {a: i for i, a in enumerate(ACTIONS)}
DEFAULT_THRESHOLDS = {"review": 50.0, "require_otp": 70.0, "deny": 100.0}
_TIERS = {"require_otp": "otp", "require_device": "device"}


@dataclass(frozen=True)
class Hit:
    rule: str
    action: str | None
    score: float | None
    mode: str            # "enforce" | "shadow"


@dataclass(frozen=True)
class Decision:
    action: str
    score: float
    hits: tuple[Hit, ...]
    # What made the action: "rule ID" (or "rules ID, ID") whose action it is,
    # "score 130 >= require_device 100" for a threshold, "score 20 < review 50" for an allow.
    set_by: str

    @property
    def required_tier(self) -> str | None:
        """The step-up tier the action asks for: "otp", "device" or None."""
        return _TIERS.get(self.action)


def combine(hits: tuple[Hit, ...], thresholds: tuple[tuple[float, str], ...]) -> Decision:
    """Most severe of the enforced actions and of the highest threshold the enforced score reaches;
    a rule's own action wins a tie with a threshold.

    `thresholds` is sorted by score ascending; shadow hits are carried along but never count.
    """
    action = "allow"
    score = 0.0
    for h in hits:
        if h.mode != "enforce":
            continue
        if h.action is not None and SEVERITY[h.action] > SEVERITY[action]:
            action = h.action
        if h.score is not None:
            score += h.score
    reached = None
    for limit, by_score in thresholds:
        if score >= limit and SEVERITY[by_score] > SEVERITY[action]:
            action, reached = by_score, limit
    if reached is not None:
        set_by = f"score {number(score)} >= {action} {number(reached)}"
    elif action != "allow":
        by_rule = [h.rule for h in hits if h.mode == "enforce" and h.action == action]
        set_by = ("rule " if len(by_rule) == 1 else "rules ") + ", ".join(by_rule)
    elif thresholds:
        limit, lowest = thresholds[0]
        set_by = f"score {number(score)} < {lowest} {number(limit)}"
    else:
        set_by = f"score {number(score)}, no threshold"
    return Decision(action, score, hits, set_by)


def number(x: float) -> str:
    """A score as people write it: 130, 12.5, -20."""
    return format(x, ".15g")
