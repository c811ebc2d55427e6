"""Every error a user can see from unimodel.

Each is a :class:`UnimodelError`; the CLI prints its message alone (no traceback
unless ``--debug``). Messages name the problem and, where there is one, the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UnimodelError(Exception):
    """Base class of all unimodel errors."""


class ComponentNotFoundError(UnimodelError, KeyError):
    """A component name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicateComponentError(UnimodelError):
    """Two plugins registered the same (kind, name)."""


class PluginError(UnimodelError):
    """A plugin is malformed: bad hook implementation, bad component record."""


class ConfigError(UnimodelError, ValueError):
    """Unknown key, wrong type or impossible value in a configuration."""


class IncompatibleObjectiveError(UnimodelError):
    """An objective needs capabilities the backbone does not provide."""


class InputError(UnimodelError, ValueError):
    """Inputs that cannot be used: model inputs of the wrong shape, dtype or range, arguments of the wrong type."""


class CheckpointError(UnimodelError):
    """Missing, truncated, corrupt or mismatched checkpoint, or one that would execute code."""


class TrainingError(UnimodelError):
    """Training cannot go on (NaN loss, bad data, missing tokens)."""


class DataError(UnimodelError):
    """Data source that cannot be read or yields nothing usable."""


class ResourceError(UnimodelError):
    """A model, generation call or corpus that would need more memory than is available (estimated before
    anything is allocated)."""


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """A ' Did you mean ...?' suffix for an error message, or '' if nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
