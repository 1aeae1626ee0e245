"""Domain errors. Each carries the HTTP status the API answers with; CLIs print the message."""


class CrawlcoinError(Exception):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(CrawlcoinError):
    status_code = 422


class NotFound(CrawlcoinError):
    status_code = 404


class Conflict(CrawlcoinError):
    status_code = 409


class IdempotencyConflict(Conflict):
    """The same idempotency key was used before for a different operation."""


class Gone(CrawlcoinError):
    """It existed and was deleted on purpose (a result's body after its retention)."""

    status_code = 410


class InsufficientFunds(CrawlcoinError):
    status_code = 402


class AuthenticationFailed(CrawlcoinError):
    status_code = 401


class PermissionDenied(CrawlcoinError):
    status_code = 403


class Throttled(CrawlcoinError):
    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class FeatureDisabled(CrawlcoinError):
    status_code = 404


class ServiceUnavailable(CrawlcoinError):
    status_code = 503
