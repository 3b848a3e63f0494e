"""chain: publish segment k+1 when segment k is done (placeholder; the stage moves here from functions/planner)."""
