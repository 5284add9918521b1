"""Retell-compatible dynamic variables: ``{{name}}`` placeholders in agent prompts.

Rules (after docs.retellai.com/build/dynamic-variables):

* Values are strings. Spaces inside the braces are trimmed: ``{{ name }}`` is ``{{name}}``.
* A missing key, or a key whose value is ``None``, leaves the placeholder exactly as written in the template
  (including its inner spaces). An empty string value replaces it with nothing.
* Names consist of letters, digits, ``_``, ``-``, ``/`` and ``.``; anything else between the braces is not a
  placeholder and is left as written.
* Placeholders nest: in ``{{current_time_{{tz}}}}`` the inner ``{{tz}}`` is resolved first and the result
  forms the outer name. If the outer name is then missing, the outer braces stay, around the resolved inner
  text (``{{current_time_Foo/Bar}}``).
* Substitution is a single pass per nesting level: a substituted value is never scanned for placeholders
  again, so user-supplied text containing ``{{x}}`` cannot inject other variables.
* Unbalanced braces are left as they are. In a run of three or more ``{`` the last two open the placeholder,
  so ``{{{name}}}`` renders as ``{value}``.
* System variables (see :func:`system_variables`): ``session_type``, ``chat_id``, ``current_time``,
  ``current_hour``, and for SMS chats ``user_number``, ``agent_number``, ``direction``. The dynamic names
  ``current_time_<IANA zone>`` and ``current_hour_<IANA zone>`` (e.g. ``current_time_America/New_York``) are
  computed by :func:`render` when it is given ``now``.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Mapping
from datetime import datetime

__all__ = ["merge", "render", "system_variables"]

_NAME = re.compile(r"[\w./-]+")
_BRACES = re.compile(r"\{\{|\}\}")
_TIME_PREFIX = "current_time_"
_HOUR_PREFIX = "current_hour_"
# Present in some system zoneinfo directories but not real IANA zones (``localtime`` is the host's zone).
_NOT_ZONES = frozenset({"localtime", "posixrules"})

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


@functools.cache
def _known_zones() -> frozenset[str]:
    """The IANA zone names available on this system (tzdata package and TZPATH), computed once."""
    return frozenset(zoneinfo.available_timezones()) - _NOT_ZONES


def _zone(key: str) -> zoneinfo.ZoneInfo | None:
    """Return the zone named ``key``, or None if it is not a known IANA zone (no file is probed otherwise)."""
    if key not in _known_zones():
        return None
    try:
        return zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _check_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")


def _format_time(local: datetime) -> str:
    """Retell style, e.g. ``Thursday, March 28, 2024 at 11:46:04 PM PDT`` (locale independent)."""
    hour = local.hour % 12 or 12
    meridiem = "AM" if local.hour < 12 else "PM"
    zone = local.tzname() or ""
    return (
        f"{_WEEKDAYS[local.weekday()]}, {_MONTHS[local.month - 1]} {local.day}, {local.year} at "
        f"{hour}:{local.minute:02d}:{local.second:02d} {meridiem} {zone}"
    ).rstrip()


def _format_hour(local: datetime) -> str:
    """Retell style, e.g. ``11 PM`` or ``12 AM``."""
    return f"{local.hour % 12 or 12} {'AM' if local.hour < 12 else 'PM'}"


def _dynamic(name: str, now: datetime) -> str | None:
    """Compute ``current_time_<zone>`` / ``current_hour_<zone>``, or None if ``name`` is neither."""
    for prefix, formatter in ((_TIME_PREFIX, _format_time), (_HOUR_PREFIX, _format_hour)):
        if name.startswith(prefix):
            zone = _zone(name[len(prefix) :])
            return None if zone is None else formatter(now.astimezone(zone))
    return None


def _resolve(inner: str, variables: Mapping[str, str], now: datetime | None) -> str:
    """Resolve the (already inner-substituted) text between one pair of braces."""
    name = inner.strip()
    if _NAME.fullmatch(name):
        value = variables.get(name)
        if value is not None:
            return value
        if now is not None:
            computed = _dynamic(name, now)
            if computed is not None:
                return computed
    return "{{" + inner + "}}"


def render(template: str, variables: Mapping[str, str], *, now: datetime | None = None) -> str:
    """Substitute ``{{name}}`` placeholders in ``template`` following the module rules.

    ``now`` (an aware datetime, normally UTC) enables the dynamic ``current_time_<zone>`` and
    ``current_hour_<zone>`` names when they are not in ``variables``; without it they stay literal.
    Raises ValueError only for a naive ``now``; template content never makes this fail.
    """
    if now is not None:
        _check_aware(now)
    # stack[0] collects output; each open "{{" pushes a frame collecting the text up to its "}}".
    stack: list[list[str]] = [[]]
    pos = 0
    while (match := _BRACES.search(template, pos)) is not None:
        start = match.start()
        stack[-1].append(template[pos:start])
        if match.group() == "{{":
            if template.startswith("{", start + 2):  # "{{{": the first "{" is plain text
                stack[-1].append("{")
                pos = start + 1
                continue
            stack.append([])
        elif len(stack) > 1:
            inner = "".join(stack.pop())
            stack[-1].append(_resolve(inner, variables, now))
        else:  # "}}" with nothing open
            stack[-1].append("}}")
        pos = start + 2
    stack[-1].append(template[pos:])
    while len(stack) > 1:  # unclosed "{{": keep it, with whatever was resolved inside
        inner = "".join(stack.pop())
        stack[-1].append("{{" + inner)
    return "".join(stack[0])


def merge(*layers: Mapping[str, str | None] | None) -> dict[str, str]:
    """Combine variable layers, later ones overriding earlier ones.

    ``None`` layers and ``None`` values are skipped, so a key set to ``None`` in a later layer falls back to
    an earlier layer (e.g. ``merge(agent_defaults, chat_variables, system)``).
    """
    merged: dict[str, str] = {}
    for layer in layers:
        if layer is None:
            continue
        for key, value in layer.items():
            if value is not None:
                merged[key] = value
    return merged


def system_variables(
    *,
    now: datetime,
    timezone: str,
    chat_id: str,
    user_number: str | None,
    agent_number: str | None,
    direction: str | None,
) -> dict[str, str]:
    """The system variables of one chat at ``now`` (an aware datetime), with times shown in ``timezone``.

    ``current_time`` looks like ``Thursday, March 28, 2024 at 11:46:04 PM PDT`` and ``current_hour`` like
    ``11 PM``. ``user_number``, ``agent_number`` and ``direction`` are included only when not None.
    Raises ValueError for an unknown ``timezone`` or a naive ``now``.
    """
    _check_aware(now)
    zone = _zone(timezone)
    if zone is None:
        raise ValueError(f"unknown timezone: {timezone!r}")
    local = now.astimezone(zone)
    result = {
        "session_type": "chat",
        "chat_id": chat_id,
        "current_time": _format_time(local),
        "current_hour": _format_hour(local),
    }
    optional = {"user_number": user_number, "agent_number": agent_number, "direction": direction}
    result.update({key: value for key, value in optional.items() if value is not None})
    return result
