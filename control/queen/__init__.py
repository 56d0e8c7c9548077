"""The queen (`rbee queen`, DESIGN §4 "Queen"): the cluster's one front door, routing each
request to a worker on any node through the keeper library. Empty until the queen's issue
fills it."""
