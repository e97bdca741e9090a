"""Small helpers shared by the samplers."""

from __future__ import annotations

from collections.abc import Sequence


def check_choice(what: str, value, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"{what}={value!r} is not valid; choose one of: {', '.join(valid)}")


# the fewest steps a sampler takes, where it is not 1, and why
MIN_STEPS: dict[str, tuple[int, str]] = {"restart": (2, "a grid point below the first to restart from")}


def min_steps(name: str) -> int:
    """The fewest steps sampler ``name`` takes."""
    return MIN_STEPS.get(name, (1, ""))[0]


def check_steps(name: str, steps: int) -> None:
    """An error where ``steps`` is fewer than the sampler can take."""
    if steps < min_steps(name):
        least, why = MIN_STEPS[name]
        raise ValueError(f"{name} needs at least {least} steps ({why}); got {steps}")
