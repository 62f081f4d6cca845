"""The admin API against its OpenAPI document (gateway/admin-openapi.yaml), with schemathesis.

Every generated call (valid and invalid bodies, path parameters, missing and wrong bearer
tokens) must get a documented status with a body matching the document, and never a 5xx.
A refused call must change nothing: the credential listing is compared before and after a
run of refused calls.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from tests.fixtures.processes import ADMIN_TOKEN, Gateway
from tests.hardening.conftest import FUZZ_EXAMPLES, RULES, pay_route

DOCUMENT = Path(__file__).resolve().parents[2] / "gateway" / "admin-openapi.yaml"
schema = schemathesis.openapi.from_path(DOCUMENT)
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TRIED: dict[str, int] = {}


@pytest.fixture(scope="module")
def admin_gateway(tmp_path_factory, upstream):
    tmp = tmp_path_factory.mktemp("admin-fuzz")
    (tmp / "rules").mkdir()
    (tmp / "rules" / "main.yaml").write_text(RULES)
    gateway = Gateway(tmp, {"rules": {"path": str(tmp / "rules"), "reload": "off"},
                            "routes": [pay_route(upstream.url)]})
    yield gateway
    gateway.stop()
    print(f"\nadmin API fuzz: {sum(TRIED.values())} calls over {len(TRIED)} operations")


@schema.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_every_admin_call_gets_a_documented_answer_and_never_a_5xx(case, admin_gateway):
    TRIED[case.operation.label] = TRIED.get(case.operation.label, 0) + 1
    headers = dict(case.headers or {})
    headers.setdefault("Authorization", AUTH["Authorization"])
    response = case.call(base_url=admin_gateway.admin, headers=headers, timeout=10)
    assert response.status_code < 500 or (case.path == "/readyz"
                                           and response.status_code == 503), response.text
    case.validate_response(response)


def test_refused_admin_calls_change_nothing(admin_gateway):
    def listing():
        return requests.get(f"{admin_gateway.admin}/admin/credentials", headers=AUTH,
                            timeout=5).json()

    before = listing()
    refused = [
        ("post", "/admin/clients", {"id": "x"}, {}),                       # no bearer token
        ("post", "/admin/clients", {"id": "x", "hmac": True}, {"Authorization": "Bearer no"}),
        ("post", "/admin/clients", {"id": "a b", "hmac": True}, AUTH),     # invalid id
        ("post", "/admin/clients", {"id": "y", "hmac": True, "public_key": "k"}, AUTH),
        ("post", "/admin/totp/u1", {"secret": "TOOSHORT"}, AUTH),
        ("post", "/admin/devices/u1", {"public_key": "-----BEGIN PRIVATE KEY-----"}, AUTH),
        ("delete", "/admin/credentials/client/nobody", None, AUTH),
        ("post", "/admin/clients/nobody/keys", {"hmac": True}, AUTH),        # no such client
        ("post", "/admin/clients/x/keys", {"hmac": True, "expires_in_s": -1}, AUTH),
        ("post", "/admin/totp/u1/confirm", {"code": "123456"}, AUTH),       # nothing staged
        ("delete", "/admin/credentials/key/nobody/k1", None, AUTH),
    ]
    for method, path, body, headers in refused:
        r = requests.request(method, admin_gateway.admin + path, json=body, headers=headers,
                             timeout=5)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
    assert listing() == before


def test_an_unknown_expectation_is_ignored_and_100_continue_answered(admin_gateway):
    import http.client
    from urllib.parse import urlsplit

    address = urlsplit(admin_gateway.admin)
    for expect, status in (("egmB", 200), ("100-continue", 200)):
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=5)
        connection.request("GET", "/admin/credentials", headers={**AUTH, "Expect": expect})
        answer = connection.getresponse()
        body = json.loads(answer.read())
        connection.close()
        assert answer.status == status and "credentials" in body, (expect, answer.status)
