import pytest
from multidict import CIMultiDict

from gateway.errors import InvalidRequest
from gateway.headers import HeaderPolicy

POLICY = HeaderPolicy(["X-Device-Id"])


def screen(*pairs):
    POLICY.check(CIMultiDict(pairs))


@pytest.mark.parametrize("name", [
    "X-HTTP-Method-Override", "x-http-method", "X-Method-Override", "X-Original-URL",
    "X-Rewrite-URL", "X_HTTP_Method_Override", "Txgate_Tier", "txgate_decision",
    "X_Device_Id", "Content_Type", "X_Forwarded_For", "X_Real_IP",
])
def test_overrides_and_underscore_twins_are_refused(name):
    with pytest.raises(InvalidRequest, match=name):
        screen((name, "x"))


@pytest.mark.parametrize("name", ["Content-Type", "Host", "Txgate-OTP", "x-device-id",
                                  "Content-Encoding", "Txgate-Challenge"])
def test_a_header_read_for_a_decision_appears_once(name):
    screen((name, "a"))
    with pytest.raises(InvalidRequest, match="sent more than once"):
        screen((name, "a"), (name.upper(), "b"))


def test_other_headers_pass_even_repeated_or_with_underscores():
    screen(("Accept", "a"), ("Accept", "b"), ("X_Custom", "1"), ("X-Request-Id", "r"))
