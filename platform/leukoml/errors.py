"""The one exception type for bad user input (config, data, names).

Raised before any work starts where possible; the CLI prints it without a
traceback and exits with status 2, the convention for usage errors.
"""


class LeukomlError(ValueError):
    """A problem with the user's input, stated so that it can be fixed."""
