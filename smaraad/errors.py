"""The one base class for a user's mistake: its message names what is wrong and what is allowed.

Command lines print it as one line on stderr and exit with code 2 (smaraad/cli.py); any other
exception is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from the user: an option, a config value, a data root, a checkpoint file."""
