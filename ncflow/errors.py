"""The exceptions of ncflow's entry points. Every message names the field (or flag, or TOML key)
and the accepted range. A leaf module."""

from __future__ import annotations


class NcflowError(ValueError):
    """Base class of ncflow's input errors."""


class ProblemError(NcflowError):
    """A problem field is outside its accepted range. The message names the field."""


class ConfigError(NcflowError):
    """A solver setting is outside its accepted range; the message names the setting."""
