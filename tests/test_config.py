"""ClientConfig: defaults, validation, AOP_* variables and secret hiding."""

from __future__ import annotations

import pickle
import string
from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_client.config import ClientConfig, _scalar_fields
from aop_client.errors import AOPError, ConfigError


def test_brief_fields_and_defaults():
    """Every field the brief shows exists, with the documented default."""
    c = ClientConfig()
    assert c.base_url == "http://localhost:8000"
    assert (c.batch_size, c.batch_interval) == (100, 5.0)
    assert (c.max_retries, c.retry_backoff_base, c.retry_backoff_max) == (3, 1.0, 60.0)
    assert (c.local_fallback_dir, c.replay_dir) == ("./aop_fallback", "./aop_replay")
    assert c.enable_streaming is False and c.streaming_url is None
    assert c.verify_ssl is True and c.org_salt_key is None
    assert c.redaction_hook is None and c.pre_send_hook is None and c.post_send_hook is None
    brief = {"api_key", "base_url", "agent_id", "batch_size", "batch_interval", "max_buffer_size",
             "max_retries", "retry_backoff_base", "retry_backoff_max", "enable_local_fallback",
             "local_fallback_dir", "enable_local_replay", "replay_dir", "enable_streaming",
             "streaming_url", "org_salt_key", "verify_ssl", "redaction_hook", "pre_send_hook",
             "post_send_hook"}
    assert brief <= {f.name for f in fields(ClientConfig)}


def test_brief_env_snippet():
    """The brief's six variables produce the configured values."""
    env = {"AOP_API_KEY": "aop_k", "AOP_BASE_URL": "http://localhost:8000", "AOP_AGENT_ID": "123",
           "AOP_BATCH_SIZE": "100", "AOP_ENABLE_STREAMING": "true",
           "AOP_STREAMING_URL": "ws://localhost:8000/ws/trace/"}
    c = ClientConfig.from_env(env)
    assert (c.api_key, c.agent_id, c.batch_size) == ("aop_k", 123, 100)
    assert c.enable_streaming is True and c.streaming_url == "ws://localhost:8000/ws/trace/"


def test_from_env_reads_process_environment(monkeypatch):
    """Without an explicit mapping, from_env reads os.environ; keyword overrides win."""
    monkeypatch.setenv("AOP_MAX_RETRIES", "7")
    monkeypatch.setenv("AOP_BATCH_SIZE", "9")
    c = ClientConfig.from_env(batch_size=3)
    assert (c.max_retries, c.batch_size) == (7, 3)


def test_every_scalar_field_has_a_variable():
    """from_env covers every scalar field, not just the brief's six."""
    names = set(_scalar_fields())
    hooks = {"redaction_hook", "pre_send_hook", "post_send_hook"}
    assert names == {f.name for f in fields(ClientConfig)} - hooks


def _env_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def test_env_round_trip_of_every_field():
    """Writing each field's default as AOP_<FIELD> text and reading it back gives the same config."""
    base = ClientConfig(api_key="k", org_salt_key="s", spool_dir="/tmp/x", seed=4,
                        streaming_url="ws://h/ws/")
    env = {f"AOP_{n.upper()}": _env_text(getattr(base, n)) for n in _scalar_fields()}
    assert ClientConfig.from_env(env) == base


@pytest.mark.parametrize(
    "var, raw",
    [("AOP_BATCH_SIZE", "abc"), ("AOP_BATCH_INTERVAL", "soon"), ("AOP_VERIFY_SSL", "maybe"),
     ("AOP_AGENT_ID", "1.5"), ("AOP_MAX_RETRIES", "-1"), ("AOP_BASE_URL", "localhost:8000"),
     ("AOP_DURABILITY", "never"), ("AOP_BATCH_SIZE", "0")],
)
def test_bad_env_value_names_variable_and_value(var, raw):
    """A bad variable fails at construction, naming the variable or field and the value."""
    with pytest.raises(ConfigError) as info:
        ClientConfig.from_env({var: raw})
    message = str(info.value)
    assert raw in message
    assert var in message or var[4:].lower() in message


@pytest.mark.parametrize(
    "kwargs, name",
    [({"batch_size": "100"}, "batch_size"), ({"batch_interval": float("nan")}, "batch_interval"),
     ({"verify_ssl": "yes"}, "verify_ssl"), ({"redaction_hook": 3}, "redaction_hook"),
     ({"streaming_url": "ftp://x"}, "streaming_url"), ({"agent_id": True}, "agent_id"),
     ({"retry_backoff_base": 10.0, "retry_backoff_max": 1.0}, "retry_backoff_base"),
     ({"max_in_flight": 0}, "max_in_flight")],
)
def test_bad_field_is_named(kwargs, name):
    """A bad keyword argument raises ConfigError whose message and .field name the field."""
    with pytest.raises(ConfigError) as info:
        ClientConfig(**kwargs)
    assert info.value.field == name and name in str(info.value)


secret_text = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=8, max_size=40).map(
    lambda s: "SECRET~" + s
)


@settings(max_examples=50)
@given(api_key=secret_text, salt=secret_text)
def test_repr_never_shows_secrets(api_key, salt):
    """repr() and str() hide api_key and org_salt_key whatever their value."""
    c = ClientConfig(api_key=api_key, org_salt_key=salt)
    for text in (repr(c), str(c), f"{c}"):
        assert api_key not in text and salt not in text
        assert "api_key='***'" in text


def test_secret_never_echoed_in_error():
    """A bad secret value is not copied into the error message or attributes."""
    with pytest.raises(ConfigError) as info:
        ClientConfig(org_salt_key="")
    assert info.value.value is None and "org_salt_key" in str(info.value)


def test_config_is_immutable_and_replace_validates():
    """Fields cannot be assigned; replace() returns a checked copy."""
    c = ClientConfig()
    with pytest.raises(AttributeError):
        c.batch_size = 5  # type: ignore[misc]
    assert c.replace(batch_size=5).batch_size == 5
    with pytest.raises(ConfigError):
        c.replace(batch_size=0)


def test_default_spool_depends_on_server_and_key(tmp_path, monkeypatch):
    """Two servers or keys never share a default spool; an explicit spool_dir wins."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    a = ClientConfig(api_key="a").spool_path
    b = ClientConfig(api_key="b").spool_path
    c = ClientConfig(api_key="a", base_url="http://other:1").spool_path
    assert len({a, b, c}) == 3 and str(a).startswith(str(tmp_path))
    assert ClientConfig(api_key="a").spool_path == a
    assert ClientConfig(spool_dir="/srv/spool").spool_path.as_posix() == "/srv/spool"


def test_default_spool_depends_on_the_salt_too(tmp_path, monkeypatch):
    """A rolling salt rotation (same server and key, two salts) gives two default spools; a base_url
    written differently for the same server gives the same one."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    paths = {ClientConfig(api_key="a", org_salt_key=salt).spool_path for salt in (None, "s1", "s2")}
    assert len(paths) == 3
    assert ClientConfig(base_url="HTTP://LocalHost:8000/", org_salt_key="s1").spool_path == \
        ClientConfig(base_url="http://localhost:8000", org_salt_key="s1").spool_path


def test_streaming_url_derived_from_base_url():
    """Without streaming_url the WebSocket URL follows base_url's host and TLS."""
    assert ClientConfig(base_url="https://aop.example:8443").effective_streaming_url == \
        "wss://aop.example:8443/ws/trace/"
    assert ClientConfig().effective_streaming_url == "ws://localhost:8000/ws/trace/"


def test_config_error_pickles_with_attributes():
    """ConfigError survives pickling with its field and value."""
    with pytest.raises(ConfigError) as info:
        ClientConfig(batch_size=0)
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, AOPError) and isinstance(copy, ValueError)
    assert (copy.field, copy.value, str(copy)) == ("batch_size", 0, str(info.value))


def test_configuration_reference_documents_every_field():
    """docs/configuration.md names every field, and every scalar field's AOP_ variable."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    for f in fields(ClientConfig):
        assert f"`{f.name}`" in text, f.name
    for name in _scalar_fields():
        assert f"`AOP_{name.upper()}`" in text, name
