"""rbee's data plane: the worker process (`worker/`), the wire protocol every part shares
(`protocol/`) and the plumbing both the hive and the worker use (`plumbing/`)."""
