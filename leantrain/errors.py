"""User-facing errors.

Every problem a user can fix (a bad recipe, a missing file, a missing column) is raised
as a :class:`UserError`, which the CLI turns into one line on stderr and exit code 2.
Anything else is a bug in leantrain and keeps its traceback.
"""
from __future__ import annotations

EXIT_USER_ERROR = 2


class LeantrainError(Exception):
    """Base class for errors leantrain raises on purpose."""

    exit_code = 1


class UserError(LeantrainError):
    """Something in the user's input is wrong; the message says what and how to fix it."""

    exit_code = EXIT_USER_ERROR


class RecipeError(UserError):
    """A recipe key is unknown, mistyped or out of range."""


class DataError(UserError):
    """A data file is missing, empty, unreadable or lacks a needed column."""


class MissingDataError(DataError):
    """A data file that does not exist (yet): the planner still plans the step without it."""


class DeviceError(UserError):
    """The requested feature is not supported on this device (e.g. fp16 on CPU)."""
