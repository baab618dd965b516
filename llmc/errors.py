"""Errors a user can act on. The CLI prints their message alone (no traceback) and exits 2."""


class LlmcError(Exception):
    """A problem with the user's input or environment, with a message that names the fix."""


class ConfigError(LlmcError):
    """The YAML config (or a --set override) is invalid."""
