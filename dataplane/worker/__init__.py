"""The worker (`rbee-worker`): one process per loaded model, llama.cpp behind an HTTP and SSE
API. It imports `rbee.dataplane.protocol` and `rbee.dataplane.plumbing`, never control code."""
