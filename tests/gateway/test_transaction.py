import json

import pytest
from multidict import CIMultiDict

from gateway.config import parse_config
from gateway.errors import GatewayError, InvalidRequest
from gateway.transaction import TransactionExtractor

FIELDS = {"user_id": "json:$.user_id", "amount": "json:$.amount", "currency": "json:$.currency",
          "payee": "json:$.payee.iban",
          "device_id": {"from": "header:X-Device-Id", "required": False},
          "attempts": {"from": "header:X-Attempts", "type": "integer", "required": False},
          "client": "principal"}


def extractor(fields=FIELDS, max_amount=1e10) -> TransactionExtractor:
    route = {"name": "payments", "match": {"path": "/p"}, "upstream": "http://u:1", "transaction": fields}
    return TransactionExtractor(parse_config({"routes": [route]}, {}).routes[0], max_amount)


def body(**overrides) -> bytes:
    doc = {"user_id": "u1", "amount": 12.5, "currency": "EUR", "payee": {"iban": "DE02"}}
    doc.update(overrides)
    return json.dumps(doc).encode()


def headers(*pairs, content_type="application/json", **named) -> CIMultiDict:
    """Request headers as aiohttp gives them: repeatable, case-insensitive."""
    out = CIMultiDict([("Content-Type", content_type)] if content_type else [])
    out.extend(pairs)
    out.extend(named.items())
    return out


def extract(raw: bytes, sent=None, originals=None, **kwargs) -> dict:
    return extractor(**kwargs).extract(raw, headers() if sent is None else sent, "app-1",
                                       originals)


def refused(raw: bytes, sent=None, status=400, **kwargs) -> str:
    with pytest.raises(GatewayError) as info:
        extract(raw, sent, **kwargs)
    code = {400: "invalid_request", 415: "unsupported_media_type"}[status]
    assert info.value.status == status and info.value.code == code
    return str(info.value)


def test_typed_attributes_from_json_headers_and_principal():
    attrs = extract(body(), headers(("X-Device-Id", "d1"), ("X-Attempts", "3")))
    assert attrs == {"user_id": "u1", "amount": 12.5, "currency": "EUR", "payee": "DE02",
                     "device_id": "d1", "attempts": 3, "client": "app-1"}


def test_optional_fields_may_be_absent():
    assert "device_id" not in extract(body())


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
    assert extract(body(amount=1500, currency="JPY"))["amount"] == 1500
    assert refused(body(amount=15.5, currency="JPY")) == "amount: more than 0 decimals for this currency"
    assert extract(body(amount=1.125, currency="KWD"))["amount"] == 1.125


def test_header_of_the_wrong_type_is_refused():
    assert refused(body(), headers(("X-Attempts", "three"))) == "attempts: expected an integer"


def test_negative_zero_is_an_amount_of_zero():
    assert extract(body(amount=-0.0))["amount"] == 0


# --- One canonical view: the body is read the way every upstream parser reads it ---------

UTF7_ATTACK = (b'{"user_id":"u","amount":1,"currency":"EUR","payee":{"iban":"DE89370400440532013000"},'
               b'"memo":"+ACIALAAiAGEAbQBvAHUAbgB0ACIAOgA5ADkAOQA5ADkALAAiAHgAIgA6ACI-"}')


@pytest.mark.parametrize("content_type", [
    "application/json; charset=utf-7",     # aiohttp's request.json() decodes UTF-7: amount 99999
    "application/json; charset=utf-16",
    "application/json; charset=latin-1",
    "application/json; boundary=x",
    "application/x-www-form-urlencoded",   # valid JSON, but a form to a form parser
    "text/plain",
    "application/problem+json",
    None,
])
def test_only_json_in_utf8_is_a_transaction(content_type):
    message = refused(UTF7_ATTACK, headers(content_type=content_type), status=415)
    assert "application/json" in message


@pytest.mark.parametrize("content_type", [
    "application/json", "Application/JSON", "application/json; charset=utf-8",
    'application/json;charset="UTF-8"',
])
def test_json_with_or_without_the_utf8_charset_is_accepted(content_type):
    assert extract(body(), headers(content_type=content_type))["amount"] == 12.5


def test_content_type_sent_twice_is_refused():
    sent = headers(("Content-Type", "application/json; charset=utf-7"))
    assert refused(body(), sent) == "header Content-Type: sent more than once"


@pytest.mark.parametrize("encodings", [("gzip",), ("identity", "gzip"), ("identity", "identity")])
def test_a_content_coding_or_two_coding_headers_are_refused(encodings):
    sent = headers(*[("Content-Encoding", e) for e in encodings])
    assert refused(body(), sent).startswith(("body: ", "header Content-Encoding"))


def test_identity_coding_once_is_accepted():
    assert extract(body(), headers(("Content-Encoding", "identity")))["amount"] == 12.5


@pytest.mark.parametrize("raw, key", [
    (b'{"user_id":"u1","amount":1,"amount":9999,"currency":"EUR","payee":{"iban":"D"}}', "amount"),
    (b'{"user_id":"u1","amount":1,"AMOUNT":9999,"currency":"EUR","payee":{"iban":"D"}}', "AMOUNT"),
    (b'{"user_id":"u1","amount":1,"\\u0061mount":9,"currency":"EUR","payee":{"iban":"D"}}', "amount"),
    (b'{"user_id":"u1","amount":1,"currency":"EUR","payee":{"iban":"D","iban":"X"}}', "iban"),
    (b'{"user_id":"u1","amount":1,"currency":"EUR","payee":{"iban":"D"},"x":[{"a":1,"a":2}]}', "a"),
])
def test_a_key_twice_in_one_object_is_refused_at_any_depth(raw, key):
    assert refused(raw).startswith(f"body: key {key!r} appears twice")


def test_colons_inside_strings_neither_hide_a_repeated_key_nor_refuse_a_good_body():
    good = body(memo="paid at 12:00, ref a:b:c")
    assert extract(good)["amount"] == 12.5
    repeated = good[:-1] + b', "amount": 99999}'
    assert refused(repeated) == "body: key 'amount' appears twice in one object"


@pytest.mark.parametrize("raw", [
    b"\xef\xbb\xbf" + body(),                       # BOM
    body()[:-1] + b', "memo": "\\ud800"}',         # lone surrogate
    body() + b" {}",                                 # trailing data
    body().replace(b"12.5", b"NaN"),
])
def test_what_only_lenient_parsers_read_is_refused(raw):
    assert refused(raw).startswith("body: ")


def test_amounts_above_max_amount_are_refused_before_any_counter():
    assert extract(body(amount=1000), max_amount=1000)["amount"] == 1000
    assert refused(body(amount=1000.01), max_amount=1000) == \
        "amount: above the largest amount accepted (1000)"
    assert refused(body(amount=2.0 ** 53)).startswith("amount: above the largest amount")


NORMALIZED = {**FIELDS,
              "user_id": {"from": "json:$.user_id", "normalize": ["nfkc", "casefold", "strip", "ascii"]},
              "currency": {"from": "json:$.currency", "normalize": ["strip", "upper"]},
              "country": {"from": "json:$.country", "normalize": ["strip", "upper"]}}


@pytest.mark.parametrize("sent, expected", [
    ("Carol", "carol"), ("carol ", "carol"), ("\uff23arol", "carol"), ("carol", "carol"),
])
def test_identities_are_normalized_before_counters_and_rules(sent, expected):
    originals = {}
    attrs = extract(body(user_id=sent, country="de", currency=" eur"), originals=originals,
                    fields=NORMALIZED)
    assert attrs["user_id"] == expected and attrs["country"] == "DE" and attrs["currency"] == "EUR"
    assert originals == {**({"user_id": sent} if sent != expected else {}),
                         "country": "de", "currency": " eur"}


@pytest.mark.parametrize("look_alike", ["c\u0430rol", "car\u200bol"])   # Cyrillic a, zero-width space
def test_look_alike_identities_are_refused_when_ascii_is_required(look_alike):
    assert refused(body(user_id=look_alike, country="DE"), fields=NORMALIZED) == \
        "user_id: only ASCII characters are accepted"


def test_normalize_is_for_text_fields_only():
    from gateway.config import ConfigError
    route = {"name": "p", "match": {"path": "/p"}, "upstream": "http://u:1",
             "transaction": {"amount": {"from": "json:$.amount", "normalize": ["strip"]}}}
    with pytest.raises(ConfigError, match="normalize applies to text fields only"):
        parse_config({"routes": [route]}, {})
