"""Settings: every one documented in gateway/README.md, bad values refused at start."""

import pytest
from pydantic import ValidationError

from gateway.server.model_server import channel_args
from gateway.server.settings import Settings
from tests.conftest import ROOT


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "gateway" / "README.md").read_text()
    missing = [n for n in Settings.model_fields if f"GATEWAY_{n.upper()}" not in readme]
    assert missing == []


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_FRAMES", "8")
    monkeypatch.setenv("GATEWAY_DETECTOR", "yunet")
    monkeypatch.setenv("GATEWAY_MAX_UPLOAD_MB", "5")
    settings = Settings()
    assert settings.frames == 8 and settings.max_upload_bytes == 5 << 20
    assert settings.detector_config().name == "yunet"


@pytest.mark.parametrize(
    ("name", "value"),
    [("FRAMES", "0"), ("THRESHOLD", "1.5"), ("DETECTOR", "haar"), ("MAX_IN_FLIGHT", "0")],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(f"GATEWAY_{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings()


def test_a_dns_target_balances_over_every_address() -> None:
    assert ("grpc.lb_policy_name", "round_robin") in channel_args("dns:///triton:8001")
    assert all(k != "grpc.lb_policy_name" for k, _ in channel_args("127.0.0.1:8001"))
