"""Phrases shared by the data modules' error messages."""

from __future__ import annotations


def objective_phrase(objective: str | None) -> str:
    """How an error message names the run's objective: ``objective 'clm'``, or ``the objective``."""
    return f"objective {objective!r}" if objective else "the objective"
