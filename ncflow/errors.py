"""The exceptions of ncflow's entry points. Every message names the field (or flag, or TOML key)
and the accepted range. A leaf module."""

from __future__ import annotations


class NcflowError(ValueError):
    """Base class of ncflow's input errors.

    Attributes:
        field: the API name of the setting the message is about (``"max_steps"``), or None when
            it is about no single setting. The message then starts with the field name, so that
            the command line and the sweep loader can call the setting by its flag or TOML key
            (:meth:`named`).
    """

    def __init__(self, message: str, field: str | None = None):
        if field is not None and not message.startswith(field):
            message = f"{field}: {message}"
        super().__init__(message)
        self.field = field

    def __reduce__(self):
        return type(self), (str(self), self.field)

    @property
    def detail(self) -> str:
        """The message after the field name (the whole message when there is no field)."""
        msg = str(self)
        return msg if self.field is None else msg[len(self.field):]

    def named(self, name: str | None) -> str:
        """The message with the setting called ``name`` (a flag such as ``--max-steps``, a TOML key
        such as ``solver.max_steps``) instead of its field name; unchanged without a field or name."""
        if self.field is None or name is None:
            return str(self)
        return name + self.detail


class ProblemError(NcflowError):
    """A problem field is outside its accepted range. The message names the field."""


class ConfigError(NcflowError):
    """A solver setting is outside its accepted range; the message names the setting."""
