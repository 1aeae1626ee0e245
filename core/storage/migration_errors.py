"""Why a store's schema cannot be brought to what this crawlcoin expects (every backend)."""

from core.errors import ServiceUnavailable


class SchemaTooNew(ServiceUnavailable):
    """The store was migrated by a newer crawlcoin: this one does not know its schema."""


class UnrecognisedSchema(ServiceUnavailable):
    """The store holds a schema crawlcoin cannot place in its migration history."""
