"""The one exception type that means "the user gave us something wrong"."""


class UserError(Exception):
    """Bad input from the user: printed as one line by the CLI, exit code 2, no traceback.

    The message should name the file, key or row at fault and say what to do.
    """


def error_line(error: Exception) -> str:
    """`error: <message>` as exactly one printable line: a newline or control character the message echoes
    from user input (an override, a file name) is shown escaped (`\\n`, `\\x1e`), never as a line break."""
    message = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(error))
    return f"error: {message}"


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, or its class name when the message is empty."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else error.__class__.__name__
