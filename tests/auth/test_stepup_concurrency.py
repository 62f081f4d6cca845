"""A burst of answers sent at once against a real Redis: every answer draws its attempt number
atomically before it is checked, so no more than max_failures answers are ever verified."""

import asyncio

from auth.credentials import CredentialStore
from auth.errors import AuthError
from auth.keys import MasterKey
from auth.challenges import request_hash
from auth.stepup import StepUp
from state.redis import RedisBackend

SECRET = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
TX = {"user_id": "alice", "amount": 150, "currency": "EUR", "payee": "DE02"}
RH = request_hash("POST", "/pay", b"{}")


class CountingStepUp(StepUp):
    verified = 0

    async def _verify(self, *args):
        type(self).verified += 1
        return await super()._verify(*args)


def test_a_concurrent_burst_of_wrong_answers_is_cut_at_the_limit(redis_server):
    async def scenario():
        state = RedisBackend(redis_server.url, timeout_ms=2000)
        store = CredentialStore(state, MasterKey(b"c" * 32))
        await store.enroll_totp("alice", SECRET)
        stepup = CountingStepUp(store, state, max_failures=3, lockout_s=60)
        challenges = []
        for _ in range(12):
            try:
                await stepup.check("otp", "client", "alice", RH, TX, {})
            except AuthError as error:
                challenges.append(error.body["challenge"])

        async def answer(challenge):
            try:
                await stepup.check("otp", "client", "alice", RH, TX,
                                   {"Txgate-Challenge": challenge, "Txgate-OTP": "000000"})
            except AuthError as error:
                return error.status

        statuses = await asyncio.gather(*(answer(c) for c in challenges))
        await state.close()
        return statuses

    statuses = asyncio.run(scenario())
    assert CountingStepUp.verified <= 3
    assert statuses.count(423) >= 12 - 2 and set(statuses) <= {401, 423}
