"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem with something the user gave (a path, a file, a name, a number).

    The message is one sentence that names the input and says how to fix it.
    """
