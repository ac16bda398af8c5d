"""The systemd unit and the example EnvironmentFile, checked with systemd's own tools.

`systemd-analyze verify` and `systemd-analyze security --offline=true` run on a copy of the
unit whose ExecStart binary is replaced by an existing executable: verify rightly refuses a
command that does not exist on this machine (/opt/evolution-listener/venv is created at
install time), and nothing else in the unit is changed. Without systemd-analyze (>= 250
for --offline) those tests skip and say so; install it with `apt-get install -y systemd`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from listener.config import Settings, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "evolution-listener.service"
ENV_EXAMPLE = ROOT / "deploy" / "evolution-listener.env.example"
EXEC_START = "/opt/evolution-listener/venv/bin/evolution-listener"
MAX_EXPOSURE = 2.0

# SPEC §5, verbatim: variable -> default.
SPEC_TUNING = {
    "LISTENER_CONCURRENCY": "8",
    "LISTENER_SWEEP_INTERVAL_S": "300",
    "LISTENER_MAX_RETRIES": "3",
    "LISTENER_RETRY_BASE_MS": "800",
    "LISTENER_HTTP_TIMEOUT_S": "10",
    "LISTENER_LEASE_S": "60",
    "LISTENER_MAX_RECLAIMS": "10",
    "LISTENER_SHUTDOWN_GRACE_S": "20",
    "LISTENER_METRICS_ADDR": "127.0.0.1:9464",
    "LISTENER_INSTANCE_PREFIX": "evo-",
    "LISTENER_INTEGRATION": "WHATSAPP-BAILEYS",
    "LISTENER_LOG_FORMAT": "auto",
    "LISTENER_LOG_LEVEL": "INFO",
}
SPEC_REQUIRED = ("DATABASE_URL", "EVOLUTION_API_BASE_URL", "EVOLUTION_API_KEY")
SPEC_WEBHOOK = ("SUPABASE_URL", "WEBHOOK_URL", "WEBHOOK_AUTHORIZATION")
SECRET_VARIABLES = ("EVOLUTION_API_KEY", "WEBHOOK_AUTHORIZATION")


# --- helpers -------------------------------------------------------------------------


def _unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value (systemd allows repeated keys, unlike configparser)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _env_lines() -> tuple[dict[str, str], dict[str, str]]:
    """(active assignments, commented-out assignments) of the example env file."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for raw in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"(#?)([A-Z][A-Z0-9_]*)=(.*)", raw.strip())
        if match:
            target = commented if match.group(1) else active
            target[match.group(2)] = _unquote(match.group(3))
    return active, commented


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (apt-get install -y systemd)")
    help_text = subprocess.run(
        [tool, "security", "--help"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    if "--offline" not in help_text:
        pytest.skip("this systemd-analyze has no --offline (needs systemd >= 250)")
    return tool


@pytest.fixture
def checkable_unit(tmp_path: Path) -> Path:
    """The unit with only its ExecStart binary swapped for one that exists here."""
    stand_in = shutil.which("true")
    assert stand_in is not None
    text = UNIT.read_text()
    assert f"ExecStart={EXEC_START} run\n" in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={EXEC_START} ", f"ExecStart={stand_in} "))
    return copy


# --- systemd's own verdicts ------------------------------------------------------------


def test_systemd_analyze_verify_passes(checkable_unit: Path) -> None:
    tool = _systemd_analyze()
    result = subprocess.run(
        [tool, "verify", str(checkable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert UNIT.name not in output, output  # no warning about our unit either


def test_verify_of_the_pristine_unit_only_misses_the_installed_binary() -> None:
    tool = _systemd_analyze()
    result = subprocess.run(
        [tool, "verify", str(UNIT)], capture_output=True, text=True, timeout=60, check=False
    )
    output = (result.stdout + result.stderr).strip()
    if Path(EXEC_START).exists():
        assert result.returncode == 0, output
        return
    complaints = [line for line in output.splitlines() if line.strip()]
    assert complaints, "verify accepted a missing ExecStart binary?"
    for line in complaints:
        assert EXEC_START in line and "not executable" in line, output


def test_security_exposure_is_at_most_2(checkable_unit: Path) -> None:
    tool = _systemd_analyze()
    result = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(checkable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, output
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, output
    # The hardening must not have switched off what the service needs.
    assert "✗ RestrictAddressFamilies=~AF_(INET|INET6)" in output
    assert "✗ PrivateNetwork=" in output


# --- what the unit must say ------------------------------------------------------------


def test_unit_runs_the_service_as_a_notify_service() -> None:
    service = _unit_directives(UNIT.read_text())["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"] == [f"{EXEC_START} run"]
    assert service["EnvironmentFile"] == ["/etc/evolution-listener/evolution-listener.env"]
    assert service["WatchdogSec"] == ["30"]
    assert "TimeoutStartSec" in service


def test_unit_restarts_on_failure_but_not_on_config_errors() -> None:
    service = _unit_directives(UNIT.read_text())["Service"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartSec"] == ["2"]
    assert "78" in " ".join(service["RestartPreventExitStatus"]).split()


def test_stop_timeout_leaves_room_for_the_shutdown_grace() -> None:
    service = _unit_directives(UNIT.read_text())["Service"]
    grace = Settings.model_fields["shutdown_grace_s"].default
    assert float(service["TimeoutStopSec"][0]) == 30
    assert float(service["TimeoutStopSec"][0]) > grace


def test_unit_hardening_keeps_what_the_service_needs() -> None:
    service = _unit_directives(UNIT.read_text())["Service"]
    families = " ".join(service["RestrictAddressFamilies"]).split()
    assert set(families) == {"AF_INET", "AF_INET6", "AF_UNIX"}  # TCP + the notify socket
    # The database and the Evolution API may be at any address.
    assert "IPAddressDeny" not in service
    assert "PrivateNetwork" not in service
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
        "User": "evolution-listener",
    }.items():
        assert service.get(key) == [value], key


# --- the example EnvironmentFile -------------------------------------------------------


def test_env_example_documents_every_spec_variable_with_its_default() -> None:
    active, commented = _env_lines()
    documented = {**commented, **active}
    for name, default in SPEC_TUNING.items():
        assert name in documented, f"{name} missing from {ENV_EXAMPLE.name}"
        assert documented[name] == default, f"{name}: {documented[name]!r} != {default!r}"
    for name in SPEC_REQUIRED:
        assert name in active, f"required {name} must be an active line"
    for name in SPEC_WEBHOOK:
        assert name in documented, name
    assert "SUPABASE_URL" in active or "WEBHOOK_URL" in active


def test_env_example_documents_every_setting_the_code_reads() -> None:
    # Drift check against the code, not only the spec: a new setting needs a line here.
    active, commented = _env_lines()
    documented = {**commented, **active}
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        assert isinstance(alias, str)
        assert alias in documented, f"{alias} (listener/config.py) missing from the example"
        if alias in commented and alias not in active:
            default = field.default
            shown = documented[alias]
            if default is None:
                assert shown, alias
            elif isinstance(default, float):
                assert float(shown) == default, alias
            else:
                assert shown == str(default), alias


def test_env_example_secrets_are_placeholders_and_it_says_chmod_600() -> None:
    text = ENV_EXAMPLE.read_text()
    active, commented = _env_lines()
    documented = {**commented, **active}
    for name in SECRET_VARIABLES:
        assert "CHANGE_ME" in documented[name], name
    assert ":CHANGE_ME@" in active["DATABASE_URL"]
    assert "0600" in text or "chmod 600" in text


def test_env_example_as_shipped_is_a_valid_configuration() -> None:
    active, _ = _env_lines()
    settings = load_settings(Settings, active)
    assert settings.concurrency == 8


def test_env_example_with_every_default_uncommented_is_valid_and_changes_nothing() -> None:
    active, commented = _env_lines()
    # WEBHOOK_URL would override SUPABASE_URL, EVOLUTION_API_SERVERS the single server (and
    # names a file of the deployed host); leave them out to compare like with like.
    everything = {**active, **{k: v for k, v in commented.items()
                               if k not in ("WEBHOOK_URL", "EVOLUTION_API_SERVERS")}}
    assert load_settings(Settings, everything).model_dump(
        exclude={"webhook_authorization"}
    ) == load_settings(Settings, active).model_dump(exclude={"webhook_authorization"})
