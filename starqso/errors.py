"""Exceptions raised for bad user input.

Every error that a user can cause (a broken file, a missing column, a bad option) is raised as
:class:`InputError`, a ``ValueError`` whose message names the file, row or value and says what
was expected. The command line turns it into one line on stderr and a non-zero exit.
"""


class InputError(ValueError):
    """A file, row or value given by the user is not what starqso expects."""
