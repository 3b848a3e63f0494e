"""Queue stage: keeps ``queue_position`` of queued jobs up to date in KV ``videogen-jobs``."""
