"""What crosses a process boundary (DESIGN §4), defined once for worker, hive, keeper and queen.

`wire` (versions, error codes, the error envelope, the message base, stream and body limits),
`events` (the inference SSE events and the queen's timeline, stop reasons), `states` (the
worker's states, and the hive's view of them), `requests` (the worker's request bodies),
`worker_api`, `hive_api` and `queen_api` (every other message of the worker, the hive and
the queen), `client`, `worker_client`, `hive_client` and `queen_client` (the APIs' client
side, with their deadlines and errors), `model_refs` (the model-reference grammar), `hosts`
(the loopback rule). This package imports no other part of rbee.
"""
