"""Assertions shared by several test files."""

import pytest


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> None:
    """The raised error is one line and mentions every fragment (file, key, value ...)."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
