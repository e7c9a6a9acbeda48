"""Sluice's one exception root.

Every error Sluice raises on purpose derives from :class:`SluiceError` and carries a
machine-readable ``code`` (the API's ``error.code``) and, where one input is to blame,
the ``field`` it came from. Adapters translate vendor errors into this tree; the API maps
it to the response envelope.

    SluiceError
    ├── ValidationFailed            bad input: a field is malformed or out of range
    │   ├── IntentInvalid           an intent (prefix, FlowSpec component, action) is wrong
    │   └── PolicyInvalid           a policy file is wrong (file, line, field)
    ├── GuardrailViolation          a rule is refused by a guardrail (code names which)
    ├── NotFound                    the rule, adapter or object does not exist
    ├── Conflict                    the request contradicts current state
    │   └── ReadOnly                the object is managed by the policy directory
    ├── AdapterError                something went wrong talking to a backend
    │   ├── AdapterConfigInvalid    settings rejected when the adapter is created
    │   ├── CapabilityMissing       the adapter cannot carry this intent
    │   ├── AdapterUnavailable      the backend is unreachable or timed out (retryable)
    │   └── AdapterRefused          the backend answered and said no (not retryable)
    └── AuthError                   missing, invalid or expired token (401)
        └── Forbidden               the token's scope does not allow this (403)
"""

from __future__ import annotations


class SluiceError(Exception):
    """Root of every error Sluice raises on purpose."""

    code: str = "internal_error"
    status: int = 500

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field

    def __str__(self) -> str:
        return self.message


class ValidationFailed(SluiceError):
    code = "invalid_parameter"
    status = 422


class IntentInvalid(ValidationFailed):
    code = "invalid_intent"


class PolicyInvalid(ValidationFailed):
    """A policy document is wrong; ``location`` is ``file:line`` where known."""

    code = "invalid_policy"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        location: str | None = None,
    ) -> None:
        full = f"{location}: {message}" if location else message
        super().__init__(full, code=code, field=field)
        self.location = location


class GuardrailViolation(SluiceError):
    code = "guardrail_violation"
    status = 422


class NotFound(SluiceError):
    code = "not_found"
    status = 404


class Conflict(SluiceError):
    code = "conflict"
    status = 409


class ReadOnly(Conflict):
    code = "read_only"


class AdapterError(SluiceError):
    code = "adapter_error"
    status = 502
    retryable: bool = False


class AdapterConfigInvalid(AdapterError):
    code = "invalid_adapter_config"
    status = 422


class CapabilityMissing(AdapterError):
    code = "capability_missing"
    status = 422


class AdapterUnavailable(AdapterError):
    code = "adapter_unavailable"
    retryable = True


class AdapterRefused(AdapterError):
    code = "adapter_refused"


class AuthError(SluiceError):
    code = "unauthorized"
    status = 401


class Forbidden(AuthError):
    code = "insufficient_scope"
    status = 403
