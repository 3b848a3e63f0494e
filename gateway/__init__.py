"""videogen's HTTP edge: OpenAI-compatible ``/v1/videos``, API keys, the web console."""
