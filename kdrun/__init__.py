"""kdrun: a command-line experiment runner for knowledge distillation."""

__version__ = "0.1.0"


class KdrunError(Exception):
    """An error the user can fix (a bad value, missing data, a wrong checkpoint).

    The CLI prints its message as one line and exits non-zero, without a traceback; the message
    names the setting and says how to fix it.
    """


class Interrupted(Exception):
    """Raised when SIGINT/SIGTERM arrives: the last completed epoch is already saved."""
