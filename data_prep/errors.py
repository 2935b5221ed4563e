"""The one exception type that data preparation and loading raise for bad input.

Command-line layers turn it into a single line on stderr and a non-zero exit; library
users can catch it without also catching programming errors.
"""


class DataError(Exception):
    """Bad input or bad files on disk: the message is meant for the user as it is."""
