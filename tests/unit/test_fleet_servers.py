"""The servers file (SPEC §10): parsed once at start, one-line errors naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from listener.config import ConfigError, Settings, load_settings
from listener.fleet.servers import (
    DEFAULT_SERVER,
    ServersFileError,
    ServerState,
    load_servers,
    load_servers_file,
)

pytestmark = pytest.mark.unit

KEYS = {"EVO_A_KEY": "key-aaa-secret", "EVO_B_KEY": "key-bbb-secret"}
GOOD = """
[servers.a]
base_url = "https://evo-a.example.com/"
api_key_env = "EVO_A_KEY"
capacity = 80

[servers.b-2]
base_url = "http://10.0.0.2:8080"
api_key_env = "EVO_B_KEY"
state = "draining"
"""
RUN_ENV = {
    "DATABASE_URL": "postgresql://svc:pw-db-secret@db.example.com:5432/postgres",
    "SUPABASE_URL": "https://ref.supabase.co",
}


def _file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "servers.toml"
    path.write_text(text)
    return str(path)


def test_a_good_file_gives_every_server_in_file_order(tmp_path: Path) -> None:
    a, b = load_servers_file(_file(tmp_path, GOOD), KEYS)
    assert (a.name, a.base_url, a.capacity, a.state) == (
        "a", "https://evo-a.example.com", 80, ServerState.ACTIVE)
    assert a.api_key.get_secret_value() == "key-aaa-secret" and a.api_key_env == "EVO_A_KEY"
    assert (b.name, b.base_url, b.capacity, b.state) == (
        "b-2", "http://10.0.0.2:8080", None, ServerState.DRAINING)
    assert a.accepts_placements and not b.accepts_placements
    assert "key-aaa-secret" not in repr(a)


BAD = [
    ("x = 1\n", "x: unknown key"),
    ("", "servers: at least one"),
    ("servers = 3\n", "servers: must be tables"),
    ("[servers]\n", "servers: at least one"),
    ('[servers.A]\nbase_url = "http://a"\napi_key_env = "EVO_A_KEY"\n', "servers.A: a server name"),
    ('[servers."a b"]\nbase_url = "http://a"\napi_key_env = "EVO_A_KEY"\n',
     'servers."a b": a server name'),
    ("[servers]\na = 1\n", "servers.a: must be a table"),
    ('[servers.a]\napi_key_env = "EVO_A_KEY"\n', "servers.a.base_url: is required"),
    ('[servers.a]\nbase_url = 5\napi_key_env = "EVO_A_KEY"\n', "servers.a.base_url: must be a"),
    ('[servers.a]\nbase_url = "ftp://a"\napi_key_env = "EVO_A_KEY"\n',
     "servers.a.base_url: must be an http(s) URL"),
    ('[servers.a]\nbase_url = "https://u:p@a"\napi_key_env = "EVO_A_KEY"\n',
     "servers.a.base_url: must not carry credentials"),
    ('[servers.a]\nbase_url = "http://a"\n', "servers.a.api_key_env: is required"),
    ('[servers.a]\nbase_url = "http://a"\napi_key_env = "not a name"\n',
     "servers.a.api_key_env: must be the name"),
    ('[servers.a]\nbase_url = "http://a"\napi_key_env = "EVO_C_KEY"\n',
     "servers.a.api_key_env: the variable EVO_C_KEY is not set"),
    ('[servers.a]\nbase_url = "http://a"\napi_key_env = "EMPTY"\n',
     "servers.a.api_key_env: the variable EMPTY is not set"),
    ('[servers.a]\nbase_url = "http://a"\napi_key_env = "EVO_A_KEY"\ncapacity = 0\n',
     "servers.a.capacity: must be a positive integer"),
    ('[servers.a]\nbase_url = "http://a"\napi_key_env = "EVO_A_KEY"\ncapacity = -3\n',
     "servers.a.capacity: must be a positive integer"),
    ('[servers.a]\nbase_url = "http://a"\napi_key_env = "EVO_A_KEY"\ncapacity = "80"\n',
     "servers.a.capacity: must be a positive integer"),
    ('[servers.a]\nbase_url = "http://a"\napi_key_env = "EVO_A_KEY"\ncapacity = true\n',
     "servers.a.capacity: must be a positive integer"),
    ('[servers.a]\nbase_url = "http://a"\napi_key_env = "EVO_A_KEY"\ncapacity = 1.5\n',
     "servers.a.capacity: must be a positive integer"),
    ('[servers.a]\nbase_url = "http://a"\napi_key_env = "EVO_A_KEY"\nstate = "off"\n',
     "servers.a.state: must be 'active' or 'draining'"),
    ('[servers.a]\nbase_url = "http://a"\napi_key_env = "EVO_A_KEY"\napi_key = "k"\n',
     "servers.a.api_key: unknown key"),
    ('[servers.a]\nbase_url = "http://a"\napi_key_env = "EVO_A_KEY"\n'
     '[servers.b]\nbase_url = "http://a/"\napi_key_env = "EVO_B_KEY"\n',
     "servers.b.base_url: same URL as servers.a"),
    ("[servers.a\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_a_bad_file_is_one_line_naming_the_file_and_the_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = _file(tmp_path, text)
    with pytest.raises(ServersFileError) as caught:
        load_servers_file(path, {**KEYS, "EMPTY": "  "})
    message = str(caught.value)
    assert message.startswith(f"EVOLUTION_API_SERVERS={path}: ")
    assert expected in message
    assert "\n" not in message
    assert "key-aaa-secret" not in message and "key-bbb-secret" not in message


def test_names_and_capacities_can_be_read_without_the_keys(tmp_path: Path) -> None:
    a, b = load_servers_file(_file(tmp_path, GOOD), {}, require_keys=False)
    assert (a.name, a.capacity, b.name, b.capacity) == ("a", 80, "b-2", None)
    assert a.api_key.get_secret_value() == ""
    with pytest.raises(ServersFileError, match="api_key_env: is required"):
        load_servers_file(_file(tmp_path, GOOD.replace('api_key_env = "EVO_A_KEY"', "")), {},
                          require_keys=False)


def test_a_missing_file_says_it_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ServersFileError, match=r"=.*nope\.toml: cannot read the file"):
        load_servers_file(str(tmp_path / "nope.toml"), KEYS)


def test_without_the_file_the_single_server_is_default_and_unlimited() -> None:
    (only,) = load_servers({"EVOLUTION_API_BASE_URL": "https://evo.example.com/",
                            "EVOLUTION_API_KEY": " k1 "})
    assert (only.name, only.base_url, only.capacity, only.state) == (
        DEFAULT_SERVER, "https://evo.example.com", None, ServerState.ACTIVE)
    assert only.api_key.get_secret_value() == "k1"
    with pytest.raises(ServersFileError, match="EVOLUTION_API_KEY: is required"):
        load_servers({"EVOLUTION_API_BASE_URL": "https://evo.example.com"})
    with pytest.raises(ServersFileError, match="EVOLUTION_API_BASE_URL: must be"):
        load_servers({"EVOLUTION_API_KEY": "k"})


# --- through Settings, as `run` loads them -------------------------------------------------


def test_settings_with_the_file_need_neither_single_server_variable(tmp_path: Path) -> None:
    settings = load_settings(
        Settings, {**RUN_ENV, **KEYS, "EVOLUTION_API_SERVERS": _file(tmp_path, GOOD)})
    assert [s.name for s in settings.servers] == ["a", "b-2"]
    assert settings.servers_file == str(tmp_path / "servers.toml")
    # Code that knows one server sees the file's first one.
    assert settings.evolution_api_base_url == "https://evo-a.example.com"
    assert set(settings.secrets()) >= {"key-aaa-secret", "key-bbb-secret", "pw-db-secret"}


def test_settings_with_the_file_ignore_a_broken_single_server_pair(tmp_path: Path) -> None:
    settings = load_settings(Settings, {
        **RUN_ENV, **KEYS, "EVOLUTION_API_SERVERS": _file(tmp_path, GOOD),
        "EVOLUTION_API_BASE_URL": "not a url", "EVOLUTION_API_KEY": ""})
    assert settings.evolution_api_key.get_secret_value() == "key-aaa-secret"


def test_settings_without_the_file_name_the_single_server_default() -> None:
    settings = load_settings(Settings, {**RUN_ENV, "EVOLUTION_API_BASE_URL": "http://e:8080/",
                                        "EVOLUTION_API_KEY": "k-single"})
    assert [(s.name, s.base_url, s.capacity) for s in settings.servers] == [
        ("default", "http://e:8080", None)]
    assert settings.servers[0].api_key.get_secret_value() == "k-single"


def test_settings_with_a_bad_file_raise_one_config_line(tmp_path: Path) -> None:
    path = _file(tmp_path, GOOD.replace("capacity = 80", "capacity = 0"))
    with pytest.raises(ConfigError) as caught:
        load_settings(Settings, {**RUN_ENV, **KEYS, "EVOLUTION_API_SERVERS": path})
    assert str(caught.value) == (
        f"configuration error: EVOLUTION_API_SERVERS={path}: servers.a.capacity: "
        "must be a positive integer")
    assert caught.value.exit_code == 78


def test_an_empty_servers_variable_means_unset() -> None:
    with pytest.raises(ConfigError, match="EVOLUTION_API_BASE_URL: is required"):
        load_settings(Settings, {**RUN_ENV, "EVOLUTION_API_KEY": "k",
                                 "EVOLUTION_API_SERVERS": ""})
