"""One exception type for every mistake a user can fix; the CLI prints it as one line."""


class UserError(Exception):
    """Bad input or configuration: the message names the thing and the fix."""
