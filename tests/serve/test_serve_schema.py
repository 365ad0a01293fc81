"""Schemathesis over the server's OpenAPI schema: generated requests (valid and invalid) never get a 5xx."""

import pytest
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install schemathesis)")

from serve_helpers import LiveServer, make_state  # noqa: E402
from test_generate_common import small_tokenizer, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def live():
    tok = small_tokenizer()
    state = make_state(tiny_model(tok.vocab_size), tok)
    state.limits.max_tokens = 8  # generated bodies ask for anything; keep each answer short
    state.limits.max_n = 2
    with LiveServer(state) as srv:
        yield srv
    srv.state.engine.scheduler.pool.check_all_free()


def test_no_server_errors(live):
    from hypothesis import given
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/v1/models"}
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=25 if op.method.upper() == "POST" else 3, deadline=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            if isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = "tiny"  # reach past the model check into validation and generation
            case.call_and_validate(base_url=live.url, checks=[not_a_server_error])

        check()
