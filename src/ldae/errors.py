"""User-facing errors.

Every problem a user can cause (a bad config key, a missing data path, a corrupt checkpoint) is
raised as a subclass of :class:`LdaeError`. The CLI prints its message as one paragraph and exits
with status 2, never with a traceback; anything else is a bug in ldae.
"""
from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any


class LdaeError(Exception):
    """Base class of errors caused by input, each with a message that names the fix."""


class ConfigError(LdaeError):
    """Unknown key, bad value or invalid combination in a config."""


class DataError(LdaeError):
    """Missing path, unreadable image or wrongly shaped array."""


class CheckpointError(LdaeError):
    """Missing, corrupt or incompatible checkpoint."""


#: the exit status of a run stopped by a non-finite loss (the CLI maps other LdaeErrors to 2)
EXIT_NONFINITE = 3


class NonFiniteLoss(LdaeError):
    """Training stopped: the loss is not finite (the message names the last good checkpoint)."""


def relative_note(value: str) -> str:
    """For error messages: what a relative path setting is relative to."""
    if not value or Path(value).is_absolute() or value.startswith("timm:"):
        return ""
    return f" (a relative path, read from the current directory {Path.cwd()})"


def shown(value: Any, limit: int = 120) -> str:
    """``value`` for an error message: one line (control characters escaped), at most ``limit``
    characters, never raising (a 5000-digit int has no ``repr``)."""
    try:
        text = str(value) if isinstance(value, (str, PurePath, BaseException)) else repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."
