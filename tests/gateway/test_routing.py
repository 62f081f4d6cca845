import pytest

from gateway.config import ConfigError, parse_config
from gateway.routing import Router


def router(**match) -> Router:
    routes = [{"name": "hosted", "match": {"path": "/p", **match}, "upstream": "http://u:1"}]
    return Router.of(parse_config({"routes": routes}, {}))


@pytest.mark.parametrize("host, entry", [
    ("pay.example", "pay.example"), ("PAY.Example", "pay.example"),
    ("pay.example:8443", "pay.example"), ("api.example:9000", "api.example:9000"),
    ("evil.example", None), ("api.example:9001", None), ("pay.example.evil", None),
])
def test_hosts_match_without_case_and_with_or_without_port(host, entry):
    r = router(hosts=["Pay.Example", "api.example:9000"])
    route = r.match("GET", "/p", host)
    assert (route.host_for(host) if route else None) == entry


def test_without_hosts_every_host_matches():
    assert router().match("GET", "/p", "anything.example") is not None


@pytest.mark.parametrize("hosts", [[], ["pay example"], ["pay.example/x"]])
def test_bad_host_lists_are_config_errors(hosts):
    with pytest.raises(ConfigError, match="hosts"):
        router(hosts=hosts)


@pytest.mark.parametrize("raw", ["/p?_method=DELETE", "/p?a=1&_METHOD=PUT", "/p?%5Fmethod=DELETE",
                                 "/p?x=1;_method=PATCH"])
def test_a_method_override_in_the_query_is_refused(raw):
    from gateway.errors import InvalidRequest
    from gateway.routing import check_path
    with pytest.raises(InvalidRequest, match="_method"):
        check_path(raw)


def test_other_queries_pass():
    from gateway.routing import check_path
    check_path("/p?method=card&payment_method=sepa")
