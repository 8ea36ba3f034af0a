"""Errors a person can cause and fix: a missing model, unreachable storage, a server not set.

Their message is one line that names the cause and the fix; the command line prints it as is,
without a traceback. (A bad brief is a BriefError, in tasks/brief.py.)
"""


class UserError(RuntimeError):
    pass
