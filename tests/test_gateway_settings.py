"""Settings: grouped, defaults from the domain objects, gateway/README.md's table generated from
the fields, bad values refused at start."""

import os

import pytest
from pydantic import ValidationError

from gateway.programs.settings_doc import BEGIN, END, markdown, with_table
from gateway.server.model_server import channel_args
from gateway.server.settings import GROUPS, ExplainConfig, Settings
from preprocess.faces import DetectorConfig
from preprocess.media import MediaLimits
from preprocess.stream import StreamRead
from tests.conftest import ROOT

README = ROOT / "gateway" / "README.md"


def test_the_readme_settings_table_is_what_make_settings_doc_writes() -> None:
    readme = README.read_text()
    assert BEGIN in readme and END in readme, "gateway/README.md lost its settings markers"
    table = readme[readme.index(BEGIN) : readme.index(END) + len(END)]
    assert table == markdown(), "gateway/README.md's settings table is stale: make settings-doc"


def test_the_table_follows_a_changed_field() -> None:
    """The check above can fail: a row edited by hand, or a field the README lacks, is
    rewritten from the fields; a README without the markers is refused."""
    readme = README.read_text()
    edited = readme.replace("| `GATEWAY_FRAMES` | `32` |", "| `GATEWAY_FRAMES` | `16` |")
    assert edited != readme and with_table(edited) == with_table(readme)
    assert "`GATEWAY_FRAMES`" in markdown()
    with pytest.raises(ValueError, match="markers"):
        with_table(readme.replace(BEGIN, ""))


def test_every_setting_is_in_exactly_one_documented_group() -> None:
    names = [name for group in GROUPS.values() for name in group.model_fields]
    assert sorted(names) == sorted(Settings.model_fields)  # none twice, none outside a group
    assert all(issubclass(Settings, group) for group in GROUPS.values())
    assert all((group.__doc__ or "").strip() for group in GROUPS.values())
    undocumented = [n for n, f in Settings.model_fields.items() if not (f.description or "")]
    assert undocumented == []
    assert all("|" not in (f.description or "") for f in Settings.model_fields.values())


def test_defaults_are_the_domain_objects_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each default is written once, in the domain object; the settings read it there."""
    for key in [k for k in os.environ if k.startswith("GATEWAY_")]:
        monkeypatch.delenv(key)
    settings = Settings(_env_file=None)
    assert settings.media_limits() == MediaLimits()
    assert settings.detector_config() == DetectorConfig()
    assert settings.explain_config() == ExplainConfig()
    read = StreamRead(
        fps=settings.live_fps,
        max_s=settings.live_stream_max_s,
        timeout_s=settings.live_stream_timeout_s,
    )
    assert read == StreamRead()


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
