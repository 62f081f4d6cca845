import asyncio
import base64

import pytest

from auth.credentials import CredentialStore
from auth.errors import MasterKeyError
from auth.keys import ENV_VAR, MasterKey, SealError, generate_master_key, load_master_key
from state.memory import MemoryBackend


def test_env_key_loads_and_round_trips():
    key = load_master_key(environ={ENV_VAR: generate_master_key()})
    sealed = key.seal(b"top secret", b"txgate:client:c1")
    assert b"top secret" not in sealed
    assert key.open(sealed, b"txgate:client:c1") == b"top secret"


def test_sealed_value_is_bound_to_its_record():
    key = MasterKey.ephemeral()
    sealed = key.seal(b"s3cret", b"txgate:client:a")
    with pytest.raises(SealError):
        key.open(sealed, b"txgate:client:b")


def test_wrong_key_does_not_open():
    sealed = MasterKey.ephemeral().seal(b"s3cret", b"ad")
    with pytest.raises(SealError):
        MasterKey.ephemeral().open(sealed, b"ad")


def test_missing_key_is_a_clear_error():
    with pytest.raises(MasterKeyError, match="no master key: set TXGATE_MASTER_KEY"):
        load_master_key(environ={})


@pytest.mark.parametrize("value", ["not base64!!", base64.b64encode(b"short").decode()])
def test_malformed_key_is_a_clear_error_without_the_value(value):
    with pytest.raises(MasterKeyError) as info:
        load_master_key(environ={ENV_VAR: value})
    assert ENV_VAR in str(info.value)
    assert value not in str(info.value)


def test_key_file_base64_and_raw(tmp_path):
    text = generate_master_key()
    (tmp_path / "b64").write_text(text + "\n")
    (tmp_path / "raw").write_bytes(base64.b64decode(text))
    sealed = load_master_key(tmp_path / "b64", environ={}).seal(b"x", b"ad")
    assert load_master_key(tmp_path / "raw", environ={}).open(sealed, b"ad") == b"x"
    with pytest.raises(MasterKeyError, match="cannot read master key file"):
        load_master_key(tmp_path / "absent", environ={})


def test_repr_never_shows_the_key():
    text = generate_master_key()
    key = load_master_key(environ={ENV_VAR: text})
    assert text not in repr(key) and text not in str(key)
    assert base64.b64decode(text).hex() not in repr(key)


def test_store_refuses_a_different_master_key_at_start_up():
    state = MemoryBackend()

    async def scenario():
        await CredentialStore(state, MasterKey.ephemeral()).check_master_key()
        await CredentialStore(state, MasterKey.ephemeral()).check_master_key()

    with pytest.raises(MasterKeyError, match="not the key the stored credentials were sealed"):
        asyncio.run(scenario())


def test_reading_a_secret_under_the_wrong_key_fails_clearly():
    state = MemoryBackend()

    async def scenario():
        await CredentialStore(state, MasterKey.ephemeral()).add_hmac_client("c1")
        await CredentialStore(state, MasterKey.ephemeral()).client_key("c1")

    with pytest.raises(MasterKeyError, match="cannot decrypt the stored secret of client 'c1'"):
        asyncio.run(scenario())
