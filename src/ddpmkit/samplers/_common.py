"""Small helpers shared by the samplers."""

from __future__ import annotations

from collections.abc import Sequence


def check_choice(what: str, value, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"{what}={value!r} is not valid; choose one of: {', '.join(valid)}")
