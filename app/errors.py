"""One exception tree for the whole service.

Every error a user can cause carries a single sentence that is safe to show
to that user (API JSON, CLI stderr, form message). Code outside the core
maps these to transport errors: HTTP status, exit code, DNS rcode.
"""

from __future__ import annotations


class BlocklistError(Exception):
    """Base of every error the service raises on purpose."""

    #: HTTP status the API answers with for this error.
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(BlocklistError):
    """A setting is missing or malformed; the message names the variable."""

    status = 500


class ValidationError(BlocklistError):
    """Input is malformed (not a domain, bad field, too long...)."""

    status = 400


class RefusedError(BlocklistError):
    """Input is well formed but a safety rule forbids it (public suffix, allowlist, IP)."""

    status = 422


class NotFoundError(BlocklistError):
    status = 404


class AuthenticationError(BlocklistError):
    """No valid credentials were presented."""

    status = 401


class PermissionDeniedError(BlocklistError):
    """The caller is known but their role or agency does not allow the action."""

    status = 403


class ConflictError(BlocklistError):
    """The action does not fit the current state (wrong status, duplicate...)."""

    status = 409


class RetryableConflictError(ConflictError):
    """A concurrent writer changed what we read; the operation may be retried."""


class StoreError(BlocklistError):
    """Redis is unreachable or answered unexpectedly."""

    status = 503


class SigningError(BlocklistError):
    """A signature or key is malformed or does not verify."""


class PublicationError(BlocklistError):
    """A publication could not be built, checked or stored."""

    status = 409
