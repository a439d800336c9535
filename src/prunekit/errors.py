"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into a single line on stderr and exit status 2; the library lets it propagate.
"""


class UsageError(ValueError):
    """Bad input from the user: the message names the problem and the fix, in one line."""
