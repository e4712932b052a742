"""User-facing errors: raised for bad configuration or input, printed by the CLI as one clear line."""


class GenLIPUserError(Exception):
    """A problem the user can fix (a path, a key, a file). The CLI prints its message without a traceback."""


class GenLIPRunError(Exception):
    """A run stopped by something outside its config (a peer rank died or froze). The CLI prints one line (the
    traceback went to the file the message names) and exits with 1."""


def user_message(err: BaseException) -> str:
    """The one line to print for a GenLIPUserError. One raised in a DataLoader worker reaches the main process
    re-created by torch with the worker's whole traceback as its message: its last line is the original one."""
    text = str(err)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        name, sep, message = last.partition(": ")
        return message if sep and name.endswith("GenLIPUserError") else last
    return text
