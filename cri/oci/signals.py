"""Signals in the CRI: StopContainer's first signal (the CRI stop_signal, else the image's StopSignal, else SIGTERM)
and the CRI Signal a container status reports."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import Any

from cri import api as cri
from runtime.errors import InvalidArgument


def _signal_number(name: str) -> int | None:
    text = name.strip().upper()
    if text.isdigit():
        number = int(text)
        return number if 0 < number <= signal.SIGRTMAX else None
    if not text.startswith("SIG"):
        text = "SIG" + text
    for base, sign in (("SIGRTMIN+", 1), ("SIGRTMAX-", -1)):
        if text.startswith(base) and text[len(base) :].isdigit():
            anchor = signal.SIGRTMIN if sign > 0 else signal.SIGRTMAX
            number = int(anchor) + sign * int(text[len(base) :])
            return number if signal.SIGRTMIN <= number <= signal.SIGRTMAX else None
    try:
        return int(signal.Signals[text])
    except KeyError:
        return None


_CRI_SIGNAL_PREFIX = "SIGNAL_"  # the pinned cri-api names its Signal values SIGNAL_SIGTERM, ...
_CRI_SIGNAL_ALIASES = {"SIGCLD": "SIGCHLD", "SIGPOLL": "SIGIO", "SIGIOT": "SIGABRT"}


def _cri_signal_name(value: cri.Signal.ValueType) -> str:
    name = cri.Signal.Name(value).removeprefix(_CRI_SIGNAL_PREFIX)
    if name.startswith("SIGRTMINPLUS"):
        return "SIGRTMIN+" + name.removeprefix("SIGRTMINPLUS")
    if name.startswith("SIGRTMAXMINUS"):
        return "SIGRTMAX-" + name.removeprefix("SIGRTMAXMINUS")
    return _CRI_SIGNAL_ALIASES.get(name, name)


def cri_signal(number: int) -> cri.Signal.ValueType:
    """The CRI Signal of a signal number (RUNTIME_DEFAULT for one the CRI has no name for)."""
    try:
        name = signal.Signals(number).name
    except ValueError:
        return _CRI_RUNTIME_DEFAULT
    try:
        return cri.Signal.Value(_CRI_SIGNAL_PREFIX + name)
    except ValueError:
        return _CRI_RUNTIME_DEFAULT


_CRI_RUNTIME_DEFAULT: cri.Signal.ValueType = 0  # type: ignore[assignment]  # SIGNAL_RUNTIME_DEFAULT


def resolve_stop_signal(config: cri.ContainerConfig, image_config: Mapping[str, Any]) -> int:
    """The signal StopContainer sends first: the CRI stop_signal, else the image's StopSignal, else SIGTERM."""
    if config.stop_signal != _CRI_RUNTIME_DEFAULT:
        try:
            name = _cri_signal_name(config.stop_signal)
        except ValueError:
            raise InvalidArgument(f"unknown stop_signal {config.stop_signal}") from None
        number = _signal_number(name)
        if number is None:
            raise InvalidArgument(f"stop_signal {name} is not a signal on this node")
        return number
    text = image_config.get("StopSignal")
    if text is not None and not isinstance(text, str):
        raise InvalidArgument("the image config's StopSignal must be a string")
    if text:
        number = _signal_number(text)
        if number is None:
            raise InvalidArgument(f"the image's StopSignal {text!r} is not a signal")
        return number
    return int(signal.SIGTERM)
