"""Test doubles and local servers for tests, benches and the demo (never used by a deployed stage).

``fakes``: in-memory fakes of the bus, KV and storage for handler unit tests (integration tests
never use these: they run against the real nats-server and S3 server).
``webhook_receiver``: a small aiohttp webhook endpoint that records and verifies deliveries.
"""
