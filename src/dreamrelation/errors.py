"""User-facing errors: raised for bad input, printed by the CLI as one line, non-zero exit."""


class UserError(Exception):
    """An error caused by the user's input (a file, a path, a config value) with a message naming the fix."""
