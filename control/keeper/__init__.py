"""The keeper: the `rbee` CLI's library on the operator machine (inventory, node access, SSH
runner, the hive and worker clients, the worker registry, the flows the CLI and the dashboard
share). It imports the hive's settings (to start hives), `rbee.dataplane.protocol` and the
shared plumbing; never the dashboard."""
