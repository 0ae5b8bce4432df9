"""Who the node is in the objects it writes.

:data:`MANUFACTURER` is the Manufacturer (0008,0070) of every object the node
writes (SR, SEG, GSPS, KOS, SC) and of its Contributing Equipment items. Loop
prevention relies on it: the router never routes an object whose Manufacturer,
or whose "Processing Algorithm" Contributing Equipment, is this value, so a
result that comes back from a PACS is not analysed again.

:data:`IMPLEMENTATION_CLASS_UID` and :data:`IMPLEMENTATION_VERSION_NAME`
identify this software (PS3.7 D.3.3.2, PS3.10 7.1): in every A-ASSOCIATE-RQ
and -AC the node sends and in the File Meta Information of every file it
writes, so that a peer's logs and a file's meta name ainode, not a library.
The UID is under the project's UID root (the default ``uid_root``); it names
the implementation, not a site, so it does not follow a site's ``uid_root``.
"""

from __future__ import annotations

__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", "MANUFACTURER", "PROJECT_UID_ROOT"]

#: Manufacturer (0008,0070) of every object this node writes; compared case-insensitively by the router.
MANUFACTURER = "ainode"

#: The project's own UID root (also the default ``uid_root`` of generated objects).
PROJECT_UID_ROOT = "1.2.826.0.1.3680043.8.498.1"

#: Implementation Class UID (0002,0012) of this software: ``<project root>.0.1``
#: (arc ``0`` of the root is kept for the implementation, never used by generated objects,
#: whose UIDs are ``<uid_root>.<decimal uuid>`` with a first arc above 0).
IMPLEMENTATION_CLASS_UID = f"{PROJECT_UID_ROOT}.0.1"

#: Implementation Version Name (0002,0013): at most 16 characters of the default repertoire.
IMPLEMENTATION_VERSION_NAME = "AINODE_0.1.0"
