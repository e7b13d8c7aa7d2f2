"""What keeps blobs alive: leases, the registry of projects, trust, roots and named references."""
