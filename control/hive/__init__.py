"""rbee-hive: the pool manager of one node (worker lifecycle, model catalog, downloads)."""
