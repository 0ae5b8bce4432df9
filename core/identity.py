"""Who the node is in the objects it writes.

:data:`MANUFACTURER` is the Manufacturer (0008,0070) of every object the node
writes (SR, SEG, GSPS, KOS, SC) and of its Contributing Equipment items. Loop
prevention relies on it: the router never routes an object whose Manufacturer,
or whose "Processing Algorithm" Contributing Equipment, is this value, so a
result that comes back from a PACS is not analysed again.
"""

from __future__ import annotations

__all__ = ["MANUFACTURER"]

#: Manufacturer (0008,0070) of every object this node writes; compared case-insensitively by the router.
MANUFACTURER = "ainode"
