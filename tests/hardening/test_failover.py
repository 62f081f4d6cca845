"""A primary lost under load (short version of `make failover`, bench/failover.py): it loses
its replicas' links for half a second (so the writes of that time never reach them), is
killed, and Redis Sentinel promotes a replica, while two gateways serve signed payments,
step-ups with wrong and right codes, and lockouts. With security records waiting for a replica
(the default), no replay is accepted and no OTP attempt, used TOTP step or lockout is
forgotten; counters lose nothing either (they travel with the claims) and are never doubled.
Bounded: ~20 s."""

from __future__ import annotations

from bench import failover


def test_sentinel_failover_under_load_forgets_no_security_record(tmp_path):
    report = failover.run("sentinel", before_s=1.5, after_s=1.0, tmp=tmp_path, lag_s=0.5,
                          payers=6, attempt_users=60, locked_users=2, totp_users=2)
    print("\n" + failover.table([report]))
    assert report.problems() == []
    # Not vacuous: the loss was seen, and every kind of record was there to lose.
    [(_, refused, _, _)] = report.outages
    assert refused > 0
    assert report.replays > 0 and report.otp_attempts > 0 and report.counter_updates > 0
    assert report.totp_reuses == 2 and report.lockouts == 2
    assert report.replays_accepted == report.otp_forgotten == 0
    assert report.totp_reuses_accepted == report.lockouts_forgotten == 0
    assert report.counters_lost == report.counters_doubled == 0
