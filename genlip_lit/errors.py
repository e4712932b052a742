"""User-facing errors: raised for bad configuration or input, printed by the CLI as one clear line."""


class GenLIPUserError(Exception):
    """A problem the user can fix (a path, a key, a file). The CLI prints its message without a traceback."""
