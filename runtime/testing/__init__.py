"""Test helpers that stand in for the servers: in-memory fakes for handler unit tests.

Integration tests never use these: they run against the real nats-server and S3 server.
"""
