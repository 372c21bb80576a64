"""Errors of the pull tool, and the exit code each one ends a run with.

Every error carries one sentence for the operator (``.message``); the
command line prints it on one line and exits with ``.exit_code``. The codes
are a contract documented in ``docs/isp-pull.md``: monitoring and the
systemd unit depend on them.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_CONFIG = 2
EXIT_FEED = 3
EXIT_LOCAL = 4
EXIT_POST_APPLY = 5
EXIT_LOCKED = 6


class PullError(Exception):
    """A run did not complete; outputs and state are as they were before it."""

    exit_code = EXIT_REFUSED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RefusedError(PullError):
    """The feed failed a check (signature, freshness, version, size, digest, format)."""

    exit_code = EXIT_REFUSED


class ConfigError(PullError):
    """The configuration file, a flag or a pinned key is wrong."""

    exit_code = EXIT_CONFIG


class FeedError(PullError):
    """The feed could not be fetched (network, TLS, HTTP status, token)."""

    exit_code = EXIT_FEED


class NotFoundError(FeedError):
    """The feed answered 404 for a file."""


class LocalError(PullError):
    """An output or the state directory could not be read or written."""

    exit_code = EXIT_LOCAL


class PostApplyError(PullError):
    """The outputs were written but the post-apply command failed (it is retried on the next run)."""

    exit_code = EXIT_POST_APPLY


class LockedError(PullError):
    """Another run holds the state directory's lock."""

    exit_code = EXIT_LOCKED
