"""Plumbing the hive and the worker both use: HTTP serving (`http`, `openapi`), the
state-machine helper (`state_machine`) and GGUF reading (`gguf_file`). It imports only
`rbee.dataplane.protocol`."""
