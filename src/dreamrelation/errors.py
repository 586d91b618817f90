"""User-facing errors and warnings: raised for bad input, printed by the CLI as one line.

A :class:`UserError` ends a command with a non-zero exit; an :class:`InputWarning` (through :func:`warn_user`)
is one ``warning:`` line where proceeding is right (a resampled mask, a truncated video, a warm-up longer
than the run). Other libraries' warnings are hidden by the CLI unless ``--verbose``.
"""

import warnings


class UserError(Exception):
    """An error caused by the user's input (a file, a path, a config value) with a message naming the fix."""


class InputWarning(UserWarning):
    """Something in the user's input that works but is probably not what they meant, with the fix."""


def warn_user(message: str) -> None:
    """Emit ``message`` as an :class:`InputWarning` (shown once per message)."""
    warnings.warn(message, InputWarning, stacklevel=2)
