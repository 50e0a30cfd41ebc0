"""Checks of user-given settings, shared by the params' own checks and the command line.

Each ``check_*`` returns its value or raises :class:`~napari_wsi_mil.errors.ParamError`
naming the setting; :func:`arg_type` turns one into an ``argparse`` ``type=`` so a bad
command-line value is refused before any work (or any file) is done. No torch import
here unless a device other than ``auto``/``cpu`` is checked.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable
from typing import Any

from napari_wsi_mil.errors import ParamError


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """An integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ParamError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return value


def check_float(
    name: str,
    value: Any,
    minimum: float = 0.0,
    maximum: float = math.inf,
    *,
    open_minimum: bool = True,
) -> float:
    """A finite number in ``(minimum, maximum]`` (``[minimum, maximum]`` when
    ``open_minimum`` is False)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParamError(f"{name} must be a number, not {value!r}") from None
    low_ok = number > minimum if open_minimum else number >= minimum
    if not math.isfinite(number) or not low_ok or number > maximum:
        low = f"{'>' if open_minimum else '>='} {minimum:g}"
        high = f" and <= {maximum:g}" if math.isfinite(maximum) else ""
        raise ParamError(f"{name} must be a finite number {low}{high}, not {value!r}")
    return number


def check_fraction(name: str, value: Any) -> float:
    """A finite number in ``[0, 1]``."""
    return check_float(name, value, 0.0, 1.0, open_minimum=False)


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda)(:\d+)?$")


def check_device(name: str) -> str:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` that exists on this machine."""
    if not isinstance(name, str) or not _DEVICE.match(name) or name.startswith(("auto:", "cpu:")):
        raise ParamError(f"device {name!r} is not auto, cpu, mps, cuda or cuda:N")
    if name in ("auto", "cpu"):
        return name
    import torch

    if name.startswith("mps"):
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ParamError(f"device {name!r}: Apple MPS is not available here")
        return name
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(name.partition(":")[2] or 0)
    if index >= count:
        have = f"{count} CUDA device{'s' if count != 1 else ''}" if count else "no CUDA device"
        raise ParamError(f"device {name!r} does not exist: this machine has {have}")
    return name


def check_json_object(name: str, text: str) -> dict:
    """A JSON object (``{...}``) given as text."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ParamError(f"{name} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ParamError(f"{name} must be a JSON object like '{{\"dropout\": 0.1}}'")
    return value


def check_class_list(name: str, text: str) -> tuple[str, ...]:
    """Comma-separated class names (two or more, distinct, none empty) as a tuple."""
    names = tuple(part.strip() for part in str(text).split(","))
    if len(names) < 2 or not all(names):
        raise ParamError(f"{name} must list two or more class names like normal,luad,lusc")
    if len(set(names)) < len(names):
        raise ParamError(f"{name} {text!r} repeats a class name")
    return names


def arg_type(check: Callable[..., Any], parse: Callable[[str], Any] = str, **limits) -> Callable:
    """An ``argparse`` ``type=``: ``parse`` the text, then ``check`` it with ``limits``."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {parse.__name__}") from None
        try:
            return check("the value", value, **limits)
        except ParamError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("the value ")) from None

    convert.__name__ = check.__name__.removeprefix("check_")
    return convert


def _check_device_arg(_name: str, text: str) -> str:
    return check_device(text)


#: ``argparse`` types of the command line.
POSITIVE_INT = arg_type(check_int, int, minimum=1)
NON_NEGATIVE_INT = arg_type(check_int, int, minimum=0)
POSITIVE_FLOAT = arg_type(check_float, float)
NON_NEGATIVE_FLOAT = arg_type(check_float, float, open_minimum=False)
FRACTION = arg_type(check_fraction, float)
JSON_OBJECT = arg_type(check_json_object)
CLASS_LIST = arg_type(check_class_list)
DEVICE = arg_type(_check_device_arg)
