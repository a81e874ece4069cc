"""The one exception type that the command line turns into a single readable message."""


class CasdapError(Exception):
    """A problem with the user's input (data, config, flags, checkpoint): says what and how to fix."""
