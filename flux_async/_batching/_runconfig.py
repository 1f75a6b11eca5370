"""A batch run's configuration as the ledger keeps it: scrubbed of secrets, comparable.

A resumed run compares its configuration (model, defaults, input file and its size and
mtime) with the one the ledger stored, so that changed defaults are explained instead of
silently mixed into one output folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["normalise_run_config", "run_config_changes", "scrub_secrets"]

_SECRET_KEY = re.compile(
    r"(?:^|[_\-\s.])(?:api[_\-]?key|key|authorization|auth|token|secret|password|bearer)$",
    re.IGNORECASE,
)


def scrub_secrets(value: Any) -> Any:
    """Return ``value`` with every mapping entry whose key names a secret removed, recursively.

    Keys like ``api_key``, ``BFL_API_KEY``, ``x-key``, ``key``, ``authorization``,
    ``token``, ``secret`` and ``password`` go; ``keywords`` or ``width`` stay.
    """
    if isinstance(value, Mapping):
        return {
            str(k): scrub_secrets(v) for k, v in value.items() if not _SECRET_KEY.search(str(k))
        }
    if isinstance(value, list | tuple):
        return [scrub_secrets(v) for v in value]
    return value


def normalise_run_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``config`` scrubbed and in the form reading it back from JSON gives.

    Tuples become lists, Paths and enums strings: the result compares equal to the
    stored copy of the same configuration.
    """
    result: dict[str, Any] = json.loads(json.dumps(scrub_secrets(config), default=str))
    return result


def run_config_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """Describe how ``new`` differs from ``old``, one ``"key: old -> new"`` line per change.

    Nested mappings are compared key by key (``defaults.width: 1024 -> 768``). An empty
    list means nothing changed (or there was no previous run).
    """
    if old is None:
        return []
    before, after = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(before.keys() | after.keys()):
        if key not in after:
            lines.append(f"{key}: {before[key]!r} -> (not set)")
        elif key not in before:
            lines.append(f"{key}: (not set) -> {after[key]!r}")
        elif before[key] != after[key]:
            lines.append(f"{key}: {before[key]!r} -> {after[key]!r}")
    return lines


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
