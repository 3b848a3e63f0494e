"""Cancel stage: stop a queued or running job and delete its partial objects."""
