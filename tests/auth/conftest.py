"""Fixtures for the auth tests: a movable clock, a memory backend, a credential store, and a
suite-wide watch on everything logged for the secret values the tests use."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time

import pytest

from auth.credentials import CredentialStore
from auth.keys import MasterKey
from state.memory import MemoryBackend

# Secret values the tests handle (HMAC secrets, TOTP seeds, OTP codes...). The session watch
# below fails the suite if any of them ever appears in a log record.
SECRETS: set[str] = set()


def remember(*secrets: str) -> None:
    SECRETS.update(s for s in secrets if s)


class _Recorder(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.lines.append(text)


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_logs():
    """Everything logged at any level during the auth suite is scanned for the secrets."""
    recorder = _Recorder()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(recorder)
    root.setLevel(logging.DEBUG)
    yield recorder
    root.removeHandler(recorder)
    root.setLevel(old_level)
    leaked = [s for s in SECRETS for line in recorder.lines if s in line]
    assert not leaked, "a secret value appeared in the logs"


class Clock:
    """A clock the tests move by hand; starts at the real time so stock signers agree."""

    def __init__(self):
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock) -> MemoryBackend:
    return MemoryBackend(clock=clock)


@pytest.fixture
def master_key() -> MasterKey:
    return MasterKey.ephemeral()


@pytest.fixture
def store(state, master_key, clock) -> CredentialStore:
    return CredentialStore(state, master_key, clock=clock)


def need_tool(name: str, package: str) -> str:
    """The path of a command-line tool; installed from Debian when missing (as `make test`)."""
    path = shutil.which(name)
    if path is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False,
                       capture_output=True)
        path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is required (apt-get install {package})")
    return path


def openssl(*args: str, input: bytes | None = None) -> bytes:
    result = subprocess.run([need_tool("openssl", "openssl"), *args], input=input,
                            capture_output=True, check=True)
    return result.stdout


class Accepting:
    """A verifier used the way the pipeline uses it: the stateless ``check``, then its claims
    in one state round trip; a claim already taken is a replay."""

    def __init__(self, verifier, state):
        self.verifier, self.state = verifier, state

    async def verify(self, method, url, headers, body, tls_client=None) -> str:
        from auth.errors import invalid_signature
        checked = await self.verifier.check(method, url, headers, body, tls_client)
        if not (await self.state.trip(checked.claims, ())).fresh:
            raise invalid_signature("replay")
        return checked.client_id


def accepting(store, state, **options) -> Accepting:
    from auth.signatures import SignatureVerifier
    return Accepting(SignatureVerifier(store, **options), state)
