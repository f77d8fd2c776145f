"""The one exception type for bad input, which the entry points print as a single line."""


class InputError(Exception):
    """Bad input from the user (config, data files, checkpoint).

    The message names the thing that is wrong and how to fix it; entry points print it
    as one line without a traceback and exit with ``exit_code``.
    """

    exit_code = 2
