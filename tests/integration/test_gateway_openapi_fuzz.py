"""A property-based run (schemathesis) of every operation in the gateway's published OpenAPI
document against the real server: whatever the input, never a 5xx (bad input is a 4xx)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.fixtures.gateway import GatewayProc, write_configs
from tests.fixtures.munge import Munged
from tests.fixtures.registry import have_tools

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not have_tools("munge"), reason="needs munge")]


@pytest.fixture(scope="module")
def gateway(munge: Munged, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    # insecure loopback only: a fuzzed tag never reaches out to a real registry for long
    conf, gwconf = write_configs(root, {"testsys": {"image_path": str(root / "images"), "munge_socket": munge.socket}},
                                 workers=1)
    proc = GatewayProc(root, conf, gwconf).start()
    yield proc
    proc.stop()


def _check(case: schemathesis.Case, munge: Munged, gateway: GatewayProc) -> None:
    headers = dict(case.headers or {})
    # Half the cases with a valid credential (deep paths), half with whatever was generated (auth paths).
    if len(repr(case.path_parameters)) % 2 == 0 or "authentication" not in headers:
        headers["authentication"] = munge.credential()
    case.headers = headers
    response = case.call(base_url=gateway.base, timeout=30)
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])
    content_type = (response.headers.get("content-type") or [""])[0]
    if content_type.startswith("application/json"):
        assert content_type == "application/json"


def test_no_input_gives_a_server_error(munge: Munged, gateway: GatewayProc) -> None:
    schema = schemathesis.openapi.from_url(f"{gateway.base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:

        @given(operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            _check(case, munge, gateway)

        check()
    assert "Traceback" not in gateway.log()  # no handler (nor background pull) crashed either
