"""rbee's control plane: the keeper (`rbee`, in `keeper/`), the hive (`rbee-hive`, in `hive/`)
and the queen (`queen/`)."""
