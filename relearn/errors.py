"""Errors that are the user's to fix.

A `UserError` carries a message meant for a person: the CLI prints it on one line per problem
and exits with status 2, without a traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (a file, a parameter, a registry state)."""

    exit_code = 2

    def __init__(self, message: str | list[str]):
        self.problems = [message] if isinstance(message, str) else list(message)
        super().__init__("\n".join(self.problems))


class ValidationError(UserError):
    """One or more problems found while validating input data."""


def report_and_exit(error: UserError) -> "typing.NoReturn":  # noqa: F821
    import sys

    for problem in error.problems:
        print(f"error: {problem}", file=sys.stderr)
    raise SystemExit(error.exit_code)


def main_guard(fn):
    """Run `fn()`; a UserError becomes one line per problem on stderr and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            report_and_exit(e)

    return wrapper
