"""The one exception type that means "the user gave us something wrong"."""


class UserError(Exception):
    """Bad input from the user: printed as one line by the CLI, exit code 2, no traceback.

    The message should name the file, key or row at fault and say what to do.
    """
