"""Step-up limits per client: one client's wrong answers lock the user out through that client
only, the user's own limit bounds guesses spread over clients, and a client's answers across
all its users are limited per window.

Found by an attack: five wrong answers through client B locked user A out everywhere, and 50
guesses against 10 users in 0.3 s met no limit at all (the lockout was per user only).
"""

import asyncio

import pytest

from auth.errors import AuthError
from auth.stepup import StepUp
from tests.auth.conftest import remember
from tests.auth.test_stepup import RH, SECRET, TX

run = asyncio.run


@pytest.fixture
def stepup(store, state, clock):
    remember(SECRET)
    for user in ("alice", *(f"u{i}" for i in range(10))):
        run(store.enroll_totp(user, SECRET))
    return StepUp(store, state, max_failures=3, max_failures_per_user=5, lockout_s=900,
                  max_attempts_per_client=12, client_window_s=60, clock=clock)


def answer(stepup, client, user="alice", code="000000") -> AuthError:
    """One wrong answer from ``client`` to a fresh challenge for ``user``."""
    with pytest.raises(AuthError) as info:
        run(stepup.check("otp", "client", user, RH, {**TX, "user_id": user}, {}, client_id=client))
    if info.value.status != 401:   # locked already: no challenge to answer
        return info.value
    challenge = info.value.body["challenge"]
    with pytest.raises(AuthError) as info:
        run(stepup.check("otp", "client", user, RH, {**TX, "user_id": user},
                         {"Txgate-Challenge": challenge, "Txgate-OTP": code}, client_id=client))
    return info.value


def test_one_clients_wrong_answers_lock_the_user_out_through_that_client_only(stepup):
    statuses = [answer(stepup, "client-b").status for _ in range(3)]
    assert statuses == [401, 401, 423]
    assert answer(stepup, "client-b").status == 423
    # The same user through another client is challenged, not locked.
    with pytest.raises(AuthError) as info:
        run(stepup.check("otp", "client", "alice", RH, TX, {}, client_id="client-a"))
    assert info.value.status == 401


def test_guesses_spread_over_clients_meet_the_users_own_limit(stepup):
    assert [answer(stepup, "client-b").status for _ in range(2)] == [401, 401]
    assert [answer(stepup, "client-c").status for _ in range(2)] == [401, 401]
    # The fifth wrong answer for alice, whichever client sends it, locks her everywhere.
    assert answer(stepup, "client-d").status == 423
    assert answer(stepup, "client-a").status == 423


def test_a_client_guessing_across_many_users_is_limited(stepup):
    statuses = [answer(stepup, "client-b", user=f"u{i % 10}").status for i in range(14)]
    # Two wrong answers per user stay under every user's lockout; the client's own limit
    # (12 answers a minute) stops the 13th.
    assert statuses[:12] == [401] * 12
    limited = answer(stepup, "client-b", user="u9")
    assert limited.status == 429 and limited.code == "too_many_attempts"
    assert limited.headers["Retry-After"] == "60"
    # Another client is not affected.
    assert answer(stepup, "client-a", user="u0").status == 401
