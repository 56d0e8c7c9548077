"""What crosses a process boundary (DESIGN §4), defined once for worker, hive, keeper and queen.

`wire` (versions, error codes, the error envelope, stream and body limits), `events` (the
inference SSE events, stop reasons), `states` (the worker's states), `requests` (the worker's
request bodies), `model_refs` (the model-reference grammar), `hosts` (the loopback rule).
This package imports no other part of rbee.
"""
