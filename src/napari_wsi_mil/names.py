"""The one rule for ids used as file and directory names (slide, case and result ids)."""

from __future__ import annotations

import re

#: Letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, no ``..``.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: Longer ids are refused: with a suffix or two they would pass the file system's 255.
MAX_NAME_LENGTH = 128


def name_problem(value: str, what: str = "slide id") -> str | None:
    """Why ``value`` is unsafe as a file name, or None when it is fine."""
    if not isinstance(value, str) or value == "":
        return f"empty {what}"
    if len(value) > MAX_NAME_LENGTH:
        return (
            f"{what} {value[:20]!r}... is {len(value)} characters long (at most {MAX_NAME_LENGTH})"
        )
    if not SAFE_NAME.match(value) or ".." in value:
        return (
            f"{what} {value!r} is not usable as a file name: use letters, digits, '.', '_' "
            "and '-', starting with a letter or digit"
        )
    return None
