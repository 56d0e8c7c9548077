"""rbee's control plane: the keeper (`rbee`) and the hive (`rbee-hive`)."""
