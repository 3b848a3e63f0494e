"""Placeholder so ``schemas/stages.py`` can name ``functions.chain.handler:handle_segment_done``.

The chain stage still lives in ``functions/planner/handler.py``; issue 12 item 2 moves it here
(and replaces this re-export).
"""

from functions.planner.handler import handle_segment_done

__all__ = ["handle_segment_done"]
