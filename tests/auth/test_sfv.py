"""auth.sfv, the fast canonical-subset parser, against http_sfv: whatever it accepts must parse
to the same values and serialize to the same text; everything else it must leave (None)."""

from __future__ import annotations

import base64

import http_sfv
from hypothesis import given, settings
from hypothesis import strategies as st

from auth import sfv


def general(text: str):
    parsed = http_sfv.Dictionary()
    parsed.parse(text.encode("ascii"))
    return parsed


def same(fast, slow) -> None:
    assert list(fast) == list(slow)
    for name, member in fast.items():
        other = slow[name]
        assert dict(member.params) == dict(other.params)
        assert str(member) == str(other)
        if isinstance(member, sfv.InnerList):
            assert isinstance(other, http_sfv.InnerList)
            assert [(i.value, dict(i.params)) for i in member] == \
                   [(i.value, dict(i.params)) for i in other]
        else:
            assert member.value == other.value
    assert str(fast) == str(slow)


def test_signature_input_and_signature():
    text = ('sig1=("@method" "@authority" "@path" "content-digest");created=1700000000;'
            'keyid="shop";alg="hmac-sha256";nonce="n-1", sig2=();created=1')
    same(sfv.parse_dictionary(text), general(text))
    text = "sig1=:dGVzdA==:, sig2=:YWJj:;x=1"
    same(sfv.parse_dictionary(text), general(text))


def test_non_canonical_forms_fall_back():
    for text in ('sig1=("@method"  "@path");created=1', 'sig1=("@method");created=01',
                 'sig1=("@method");created=-0', 'a=:YQ==:,b=:YQ==:', 'a=:YQ==:, ',
                 'a=:YQ==:, a=:YQ==:', 'a=("x";sf)', 'a=("x");k=1;k=2', 'a=tok', 'a',
                 ' a=:YQ==:', 'a=("\\"")', 'a=:YQ:', 'a=:YQ=:', ''):
        assert sfv.parse_dictionary(text) is None, text


_text = st.text(alphabet='abc;=:()" ,-01@*.+/QYZ=\\', max_size=60)


@settings(max_examples=400, deadline=None)
@given(_text)
def test_fast_path_agrees_with_http_sfv(text):
    fast = sfv.parse_dictionary(text)
    if fast is None:
        return
    same(fast, general(text))


_key = st.from_regex(r"[a-z*][a-z0-9_\-.*]{0,5}", fullmatch=True)
_string = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e,
                                         blacklist_characters='"\\'), max_size=8)
_param = st.tuples(_key, st.one_of(_string.map(lambda s: f'"{s}"'),
                                   st.integers(-10**15 + 1, 10**15 - 1).map(str)))
_params = st.lists(_param, max_size=3, unique_by=lambda p: p[0])


def _text_of(params) -> str:
    return "".join(f";{k}={v}" for k, v in params)


_item = st.tuples(_string, _params).map(lambda t: f'"{t[0]}"{_text_of(t[1])}')
_value = st.one_of(
    st.lists(_item, max_size=4).map(lambda items: "(" + " ".join(items) + ")"),
    st.binary(max_size=12).map(lambda b: f":{base64.b64encode(b).decode()}:"))
_member = st.tuples(_key, _value, _params).map(lambda t: f"{t[0]}={t[1]}{_text_of(t[2])}")


@settings(max_examples=400, deadline=None)
@given(st.lists(_member, min_size=1, max_size=3, unique_by=lambda m: m.split("=", 1)[0]))
def test_canonical_dictionaries_take_the_fast_path(members):
    text = ", ".join(members)
    fast = sfv.parse_dictionary(text)
    assert fast is not None
    same(fast, general(text))
