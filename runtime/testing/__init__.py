"""Test doubles and local servers for tests, benches and the demo (never used by a deployed stage).

``webhook_receiver``: a small aiohttp webhook endpoint that records and verifies deliveries.
"""
