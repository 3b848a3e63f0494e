"""sweeper: dead-letter the messages no worker finished (JetStream max-deliveries advisories)."""
