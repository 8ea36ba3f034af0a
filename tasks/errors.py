"""Errors a person can cause and fix: a missing model, unreachable storage, a server not set.

Their message is one line that names the cause and the fix; the command line prints it as is,
without a traceback. (A bad brief is a BriefError, in tasks/brief.py.)

Exit codes: an InputError (a brief field, a flag, a setting, a file or folder named) is refused
before anything runs, with exit code 2; a UserError (missing weights, unreachable storage, a
run that failed) exits 1.
"""


class UserError(RuntimeError):
    pass


class InputError(ValueError):
    """Something a person typed or named is wrong: fixed by changing it, refused before any model loads."""


class SettingError(InputError):
    """A GENBUNDLE_* setting (or the device it asks for) is not usable; the message names the variable."""
