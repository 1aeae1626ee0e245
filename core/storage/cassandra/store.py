"""`CassandraStore`: the per-domain parts of the Cassandra backend composed into one Store."""

from core.storage.cassandra.accounts import CassandraAccounts
from core.storage.cassandra.ledger import CassandraLedgerMethods
from core.storage.cassandra.recovery import CassandraRecovery
from core.storage.cassandra.results import CassandraResults
from core.storage.cassandra.retention import CassandraRetention
from core.storage.cassandra.watch import CassandraWatch
from core.storage.cassandra.webhooks import CassandraWebhooks


class CassandraStore(CassandraAccounts, CassandraLedgerMethods, CassandraRecovery, CassandraResults,
                     CassandraRetention, CassandraWatch, CassandraWebhooks):
    """The Store protocol on an Apache Cassandra (4.1+/5.x) cluster."""
