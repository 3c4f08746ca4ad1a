"""The exception tree: one root, standard bases where they fit, and pickling."""

from __future__ import annotations

import pickle

import pytest

import aop_client
from aop_client import errors


ALL = [
    errors.ConfigError("bad batch_size", field="batch_size", value=0),
    errors.ValidationError("payload.x is NaN", field="payload.x", value=float("inf")),
    errors.ToonParseError("unexpected indent", line=3, column=5, source_format="toon"),
    errors.SignatureError("signature mismatch"),
    errors.StoreError(28, "No space left on device"),
    errors.StoreFullError("store full"),
    errors.FencedError("epoch 3 < 4"),
    errors.TransportError("503 from server", status=503, retryable=True),
    errors.StreamingUnavailableError("pip install 'aop-client[streaming]'"),
]


@pytest.mark.parametrize("err", ALL, ids=lambda e: type(e).__name__)
def test_every_error_is_an_aoperror_and_pickles(err):
    """Every error derives from AOPError and survives pickling with message and attributes."""
    copy = pickle.loads(pickle.dumps(err))
    assert isinstance(err, errors.AOPError)
    assert type(copy) is type(err)
    assert str(copy) == str(err) and copy.args == err.args
    assert copy.__dict__ == err.__dict__


def test_standard_bases():
    """Value-like errors are ValueErrors, store errors OSErrors, a missing extra an ImportError."""
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.ValidationError, ValueError)
    assert issubclass(errors.ToonParseError, ValueError)
    assert issubclass(errors.StoreFullError, OSError)
    assert issubclass(errors.StreamingUnavailableError, ImportError)


def test_toon_parse_error_message_has_position():
    """ToonParseError puts line, column and reason in its message."""
    err = errors.ToonParseError("unexpected indent", line=3, column=5, source_format="toon")
    assert "line 3" in str(err) and "column 5" in str(err) and "unexpected indent" in str(err)


def test_package_exports_the_tree():
    """The package root re-exports every error class and rejects unknown names."""
    for name in errors.__all__:
        assert getattr(aop_client, name) is getattr(errors, name)
    with pytest.raises(AttributeError):
        aop_client.NoSuchThing  # noqa: B018
