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

    @property
    def required_tier(self) -> str | None:
        """The step-up tier the action asks for: "otp", "device" or None."""
        return _TIERS.get(self.action)


def combine(hits: tuple[Hit, ...], thresholds: tuple[tuple[float, str], ...]) -> Decision:
    """Most severe of the enforced actions and of the highest threshold the enforced score reaches.

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
    for limit, by_score in thresholds:
        if score >= limit and SEVERITY[by_score] > SEVERITY[action]:
            action = by_score
    return Decision(action, score, hits)
