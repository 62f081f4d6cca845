import pytest

from pathlib import Path

from gateway.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]

ROUTE = {"name": "payments", "match": {"path": "/v1/payments", "methods": ["POST"]},
         "upstream": "http://127.0.0.1:9000"}


def errors_of(data, env=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env or {})
    return str(info.value).splitlines()


def test_defaults_match_the_contract():
    config = parse_config({}, {})
    assert config.listen == "0.0.0.0:8080"
    assert config.admin_listen == "127.0.0.1:9090"
    assert config.state.backend == "memory" and config.state.timeout_ms == 100
    # The shipped pack, wherever txgate runs from.
    assert config.rules.path == str(ROOT / "rules" / "default") and config.rules.reload == "watch"
    assert config.limits.max_body_bytes == 1048576 and config.limits.upstream_timeout_s == 10
    assert config.auth.totp.max_failures == 5 and config.auth.totp.lockout_s == 900
    assert config.auth.challenge_ttl_s == 300
    assert config.decision_log.path == "decisions.jsonl"
    assert config.rules.timezone == "UTC"


def test_errors_name_their_key_path_and_are_all_reported():
    lines = errors_of({"routes": [ROUTE, {**ROUTE, "name": "b", "upstream": "ftp:/x", "bogus": 1}],
                       "limits": {"max_body_bytes": -1}})
    assert "routes[1].upstream: not a URL (expected http://host:port)" in lines
    assert "routes[1].bogus: unknown key" in lines
    assert any(line.startswith("limits.max_body_bytes: ") for line in lines)


def test_an_upstream_url_with_credentials_is_refused():
    lines = errors_of({"routes": [{**ROUTE, "upstream": "https://svc:s3cret@pay.internal"}]})
    assert lines == ["routes[0].upstream: an upstream URL carries no credentials (user:password@)"]
    assert "s3cret" not in " ".join(lines)


def test_unknown_top_level_and_nested_keys_are_errors():
    assert errors_of({"listne": "x"}) == ["listne: unknown key"]
    assert errors_of({"auth": {"totp": {"digit": 6}}}) == ["auth.totp.digit: unknown key"]


def test_transaction_short_and_long_forms():
    route = {**ROUTE, "transaction": {"user_id": "json:$.user_id", "amount": "json:$.amount",
                                      "device_id": {"from": "header:X-Device-Id", "required": False},
                                      "count": {"from": "json:$.items[0].n", "type": "integer"}}}
    fields = parse_config({"routes": [route]}, {}).routes[0].transaction
    assert fields["user_id"].source == "json:$.user_id" and fields["user_id"].required
    assert not fields["device_id"].required
    assert fields["count"].type == "integer"


def test_bad_transaction_source_and_type_are_named():
    route = {**ROUTE, "transaction": {"amount": "body.amount", "x": {"from": "json:$.x", "type": "money"}}}
    lines = errors_of({"routes": [route]})
    assert any(line.startswith("routes[0].transaction.amount.from: ") for line in lines)
    assert any(line.startswith("routes[0].transaction.x.type: ") for line in lines)


def test_match_needs_exactly_one_path_and_names_are_unique():
    lines = errors_of({"routes": [{**ROUTE, "match": {"methods": ["GET"]}}, ROUTE]})
    assert lines == ["routes[0].match: exactly one of path or path_prefix"]
    assert errors_of({"routes": [ROUTE, ROUTE]}) == ["routes: route name 'payments' is used twice"]


def test_redis_url_comes_from_the_environment():
    assert errors_of({"state": {"backend": "redis"}}) == [
        "state: the redis backend needs url (or TXGATE_REDIS_URL) or sentinel"]
    config = parse_config({"state": {"backend": "redis"}}, {"TXGATE_REDIS_URL": "redis://h:1/0"})
    assert config.state.url == "redis://h:1/0"


def test_file_errors_carry_the_file_name(tmp_path):
    path = tmp_path / "txgate.yaml"
    path.write_text("listen: [unclosed\n")
    with pytest.raises(ConfigError, match=r"txgate\.yaml:\d+: not valid YAML"):
        load_config(path)
    path.write_text("state: {backend: postgres}\n")
    with pytest.raises(ConfigError, match=r"txgate\.yaml:1: state\.backend: "):
        load_config(path)


def test_file_errors_carry_the_line_of_each_key_all_at_once(tmp_path):
    path = tmp_path / "txgate.yaml"
    path.write_text(
        "listen: 127.0.0.1:8080\n"                                    # 1
        "routes:\n"                                                   # 2
        "  - name: pay\n"                                             # 3
        "    match: {path: /pay, methods: [POST, GTE]}\n"             # 4
        "    upstream: http://127.0.0.1:99999\n"                      # 5
        "  - name: read\n"                                            # 6
        "    match: {path_prefix: /r}\n"                              # 7
        "    upstream: http://127.0.0.1:9000\n"                       # 8
        "    on_state_error: fail_opn\n"                              # 9
        "    colour: blue\n")                                         # 10
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert f"{path}:4: routes[0].match.methods: unknown method 'GTE' (expected GET, HEAD, " \
           "POST, PUT, PATCH, DELETE, OPTIONS)" in lines
    assert f"{path}:5: routes[0].upstream: not a URL: bad port (expected http://host:port)" \
        in lines
    assert any(line.startswith(f"{path}:9: routes[1].on_state_error: ") for line in lines)
    assert f"{path}:10: routes[1].colour: unknown key" in lines
    assert len(lines) == 4


def test_duplicate_keys_are_errors_and_off_is_a_word(tmp_path):
    path = tmp_path / "txgate.yaml"
    path.write_text("rules: {reload: off}\nlisten: 127.0.0.1:1\nlisten: 127.0.0.1:2\n")
    with pytest.raises(ConfigError, match=r"txgate\.yaml:3: not valid YAML: duplicate key"):
        load_config(path)
    path.write_text("rules: {reload: off}\n")
    assert load_config(path).rules.reload == "off"


def test_relative_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "txgate.yaml"
    path.write_text("rules: {path: rules}\ndecision_log: {path: log/d.jsonl}\n"
                    "auth: {master_key_file: /abs/key}\n")
    config = load_config(path)
    assert config.rules.path == str(tmp_path / "etc" / "rules")
    assert config.decision_log.path == str(tmp_path / "etc" / "log" / "d.jsonl")
    assert config.auth.master_key_file == "/abs/key"


def test_an_attribute_has_one_type_across_routes():
    a = {**ROUTE, "transaction": {"count": {"from": "json:$.n", "type": "integer"}}}
    b = {**ROUTE, "name": "b", "transaction": {"count": {"from": "json:$.n", "type": "boolean"}}}
    assert errors_of({"routes": [a, b]}) == [
        "routes: attribute 'count' is a boolean in route 'b' but a number in route 'payments'"]
    c = {**ROUTE, "name": "c", "transaction": {"count": {"from": "json:$.n", "type": "number"}}}
    assert parse_config({"routes": [a, c]}, {}).routes[1].name == "c"


def test_sentinel_is_checked_and_waits_for_one_replica_by_default():
    sentinel = {"master": "txgate", "nodes": ["127.0.0.1:26379", "10.0.0.2:26379"]}
    config = parse_config({"state": {"backend": "redis", "sentinel": sentinel}}, {})
    assert config.state.backend_options()["sentinel"] == (
        "txgate", [("127.0.0.1", 26379), ("10.0.0.2", 26379)])
    assert config.state.replicas == 1
    cluster = parse_config({"state": {"backend": "redis", "url": "redis://h:1", "cluster": True}})
    assert cluster.state.replicas == 1
    single = parse_config({"state": {"backend": "redis", "url": "redis://h:1"}})
    assert single.state.replicas == 0
    assert parse_config({"state": {"backend": "redis", "sentinel": sentinel,
                                   "wait_replicas": 2}}).state.replicas == 2
    assert errors_of({"state": {"backend": "redis", "sentinel": {**sentinel,
                                                                 "nodes": ["nohost"]}}}) == [
        "state.sentinel.nodes: expected HOST:PORT"]
    assert errors_of({"state": {"backend": "redis", "sentinel": sentinel, "cluster": True}}) == [
        "state: cluster and sentinel exclude each other"]
    assert errors_of({"state": {"backend": "redis", "url": "redis://h:1",
                                "wait_replicas": -1}})[0].startswith("state.wait_replicas: ")


def test_rules_timezone_is_an_iana_zone_and_a_bad_one_names_the_key(tmp_path):
    zone = parse_config({"rules": {"timezone": "Europe/Berlin"}}, {}).rules.zone
    assert str(zone) == "Europe/Berlin"
    for bad in ("Europe/Berln", "CET+1", "", "../etc/passwd", "/etc/localtime", "localtime"):
        [line] = errors_of({"rules": {"timezone": bad}})
        assert line == (f"rules.timezone: unknown time zone {bad!r} (an IANA name such as "
                        "Europe/Berlin, America/New_York or UTC)")
    path = tmp_path / "txgate.yaml"
    path.write_text("listen: 127.0.0.1:8080\nrules:\n  reload: off\n  timezone: Mars/Olympus\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value).startswith(f"{path}:4: rules.timezone: unknown time zone 'Mars/Olympus'")
