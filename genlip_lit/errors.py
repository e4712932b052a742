"""User-facing errors: raised for bad configuration or input, printed by the CLI as one clear line."""


class GenLIPUserError(Exception):
    """A problem the user can fix (a path, a key, a file). The CLI prints its message without a traceback."""


class GenLIPRunError(Exception):
    """A run stopped by something outside its config (a peer rank died or froze). The CLI prints one line (the
    traceback went to the file the message names) and exits with 1."""
