"""The mining server: leases jobs from the Valkey job stream to connected miners, stores results, pays."""
