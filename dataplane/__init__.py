"""rbee's data plane: the worker process and the wire protocol every part shares."""
