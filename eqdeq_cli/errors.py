"""Errors a user can cause, and how the command line recognises them.

Library code raises ``ValueError`` / ``FileNotFoundError`` / ``KeyError`` (or
:class:`UserError`) with one message that names the bad value and what would be valid.
The ``eqdeq`` command prints such an error as one line on stderr, without a traceback,
and exits non-zero; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's configuration, files or command line."""


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable or not an eqdeq checkpoint."""


class TrainingDivergedError(UserError):
    """Too many consecutive training steps produced a non-finite loss."""


#: Exception types whose message is shown to the user without a traceback.
USER_ERROR_TYPES: tuple[type[BaseException], ...] = (UserError, ValueError, FileNotFoundError, KeyError)


def user_error_message(exc: BaseException) -> str | None:
    """The message to show for ``exc`` if it (or what it wraps) is a user error, else ``None``.

    ``hydra.utils.instantiate`` wraps exceptions raised by constructors in an
    ``InstantiationException``; the chain of ``__cause__`` is followed so that, for
    example, a ``ValueError`` raised by a physics constructor is still recognised.
    """
    from hydra.errors import InstantiationException

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, USER_ERROR_TYPES):
            if isinstance(current, KeyError) and len(current.args) == 1:
                return str(current.args[0])
            return str(current)
        if isinstance(current, InstantiationException) and current.__cause__ is None:
            return str(current)
        current = current.__cause__
    if isinstance(exc, InstantiationException):
        return str(exc)
    return None
