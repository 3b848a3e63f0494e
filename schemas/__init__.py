"""The public contract of videogen: names, messages, error codes, model registry.

Depends on pydantic only. Every subject, stream, bucket and object key that crosses a
process boundary is defined here exactly once.
"""
