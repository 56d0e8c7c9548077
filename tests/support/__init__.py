"""Helpers the tests share: fake nodes (sshd), tiny models, a model server, hive processes,
inventories, transition tables. Imported as `support.NAME` (pytest puts tests/ on sys.path)."""
