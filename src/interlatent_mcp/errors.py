"""The library's exception hierarchy.

Every expected failure raises a subclass of `InterlatentError` whose message states what was wrong,
with the offending value, and what to do next. The MCP layer turns these into tool errors and the
command line prints them without a traceback.
"""

from __future__ import annotations


class InterlatentError(Exception):
    """Base class for every expected failure of the library."""


class InvalidArgumentError(InterlatentError, ValueError):
    """An argument is out of range, malformed or inconsistent with another argument."""


class NotFoundError(InterlatentError, LookupError):
    """A named object (run, layer, policy, environment, channel, job) does not exist."""


class UnknownPolicyError(NotFoundError):
    """A policy name or file could not be resolved."""


class UnknownEnvironmentError(NotFoundError):
    """A Gymnasium environment id is not registered."""


class UnknownLayerError(NotFoundError):
    """A layer name is not a hook point of the policy."""


class UnknownRunError(NotFoundError):
    """A run id is not in the store."""


class SpaceMismatchError(InterlatentError):
    """A policy's action or observation space does not fit the environment."""


class StoreError(InterlatentError):
    """The store file cannot be opened or is inconsistent."""


class StoreVersionError(StoreError):
    """The store was written by a newer version of interlatent than the one running."""


class AnalysisNotFoundError(NotFoundError):
    """No statistics have been computed yet for the requested runs and layer."""


def closest_names(name: str, known: list[str], limit: int = 3) -> list[str]:
    """Return up to `limit` names from `known` that look like `name`, for "did you mean" hints."""
    import difflib

    return difflib.get_close_matches(name, known, n=limit, cutoff=0.5)
