"""The keeper: the `rbee` CLI's library on the operator machine (inventory, node access, SSH
runner, the hive and worker clients, the worker registry, the flows the CLI and the dashboard
share). It imports the hive's settings (to start hives), `rbee.dataplane.protocol` and the
shared plumbing; never the dashboard."""

import warnings

# asyncssh (2.24) names DSA key types when imported, and cryptography 51 warns that DSA is
# deprecated: a screenful of warnings on every `rbee` command, about keys rbee never offers.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh\.")
