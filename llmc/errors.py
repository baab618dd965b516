"""Errors a user can act on. The CLI prints their message alone (no traceback) and exits 2."""


class LlmcError(Exception):
    """A problem with the user's input or environment, with a message that names the fix."""


class ConfigError(LlmcError):
    """The YAML config (or a --set override) is invalid."""


def reason(err: BaseException, limit: int = 300) -> str:
    """An exception as one short line, for a message that quotes the underlying cause."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}{' ...' if len(text) > limit else ''}"
