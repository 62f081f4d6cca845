import pytest

from gateway.config import parse_config
from gateway.errors import InvalidRequest
from gateway.transaction import TransactionExtractor

FIELDS = {"user_id": "json:$.user_id", "amount": "json:$.amount", "currency": "json:$.currency",
          "payee": "json:$.payee.iban",
          "device_id": {"from": "header:X-Device-Id", "required": False},
          "attempts": {"from": "header:X-Attempts", "type": "integer", "required": False},
          "client": "principal"}


def extractor() -> TransactionExtractor:
    route = {"name": "payments", "match": {"path": "/p"}, "upstream": "http://u:1", "transaction": FIELDS}
    return TransactionExtractor(parse_config({"routes": [route]}, {}).routes[0])


def body(**overrides) -> bytes:
    import json
    doc = {"user_id": "u1", "amount": 12.5, "currency": "EUR", "payee": {"iban": "DE02"}}
    doc.update(overrides)
    return json.dumps(doc).encode()


def refused(raw: bytes, headers=None) -> str:
    with pytest.raises(InvalidRequest) as info:
        extractor().extract(raw, headers or {}, "app-1")
    assert info.value.status == 400 and info.value.code == "invalid_request"
    return info.value.message


def test_typed_attributes_from_json_headers_and_principal():
    attrs = extractor().extract(body(), {"X-Device-Id": "d1", "X-Attempts": "3"}, "app-1")
    assert attrs == {"user_id": "u1", "amount": 12.5, "currency": "EUR", "payee": "DE02",
                     "device_id": "d1", "attempts": 3, "client": "app-1"}


def test_optional_fields_may_be_absent():
    assert "device_id" not in extractor().extract(body(), {}, "app-1")


@pytest.mark.parametrize("raw, field", [
    (b"{not json", "body"),
    (b'{"amount": 1e400}', "body"),
    (b'{"amount": NaN}', "body"),
    (body(amount="10.00"), "amount"),
    (body(amount=-1), "amount"),
    (body(amount=True), "amount"),
    (body(amount=10.001), "amount"),
    (body(currency="EURO"), "currency"),
    (body(currency=[]), "currency"),
    (body(currency={"code": "EUR"}), "currency"),
    (body(user_id=7), "user_id"),
    (body(payee={}), "payee"),
    (body(payee="DE02"), "payee"),
    (b"[]", "user_id"),
    (body(payee={"iban": "DE" + "0" * 70_000}), "payee"),
    (body(user_id="u\u0000admin"), "user_id"),
])
def test_bad_input_is_refused_naming_the_field(raw, field):
    assert refused(raw).startswith(f"{field}: ")


def test_decimals_follow_the_currency():
    assert extractor().extract(body(amount=1500, currency="JPY"), {}, "a")["amount"] == 1500
    assert refused(body(amount=15.5, currency="JPY")) == "amount: more than 0 decimals for this currency"
    assert extractor().extract(body(amount=1.125, currency="KWD"), {}, "a")["amount"] == 1.125


def test_header_of_the_wrong_type_is_refused():
    assert refused(body(), {"X-Attempts": "three"}) == "attempts: expected an integer"


def test_negative_zero_is_an_amount_of_zero():
    assert extractor().extract(body(amount=-0.0), {}, "a")["amount"] == 0
