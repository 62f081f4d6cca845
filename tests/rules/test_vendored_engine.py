"""The rule engine is our build of the vendored durable-rules 2.0.28 (docs/durable-rules.md)."""
import sysconfig

import pytest

from rules.engine import dre


def test_the_engine_is_built_from_vendor_for_this_interpreter():
    # The PyPI sdist's module is top-level `durable_rules_engine` and does not import on 3.13.
    assert dre.__name__ == "rules.durable_rules_engine"
    assert dre.__file__.endswith(sysconfig.get_config_var("EXT_SUFFIX"))


def test_calls_back_into_python_through_the_patched_call():
    # The one patch: rules.c's callbacks call PyObject_CallObject, not PyEval_CallObject (gone
    # in 3.13). Built unpatched on 3.13 with a shim defining the old name, the implicit `int`
    # declaration truncates the returned pointer and this test dies of SIGSEGV; here the
    # callback's return value comes back intact as the engine's error code.
    handle = dre.create_ruleset("txgate_callback_probe",
                                '{"r": {"all": [{"m": {"$ex": {"x": 1}}}]}}')
    calls = []

    def store_message(ruleset, sid, mid, action_type, content):
        calls.append((ruleset, sid, mid, content))
        return 7

    try:
        dre.set_store_message_callback(handle, store_message)
        with pytest.raises(dre.error, match="error code: 7"):
            dre.assert_fact(handle, '{"sid":"0","id":"1","x":1}')
    finally:
        dre.delete_ruleset(handle)
    assert calls == [("txgate_callback_probe", "0", "1", '{"sid":"0","id":"1","x":1}')]
