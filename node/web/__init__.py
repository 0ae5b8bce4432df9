"""The parts of the node's HTTP server beyond health and metrics (:mod:`node.http` serves them).

* :mod:`node.web.auth`: who may call the node (API tokens, users with hashed passwords).
* :mod:`node.web.stow`: STOW-RS intake (PS3.18 10.5) into the same receiver as C-STORE.
* :mod:`node.web.pull`: ``POST /api/pull``, a pull from a configured source (:mod:`node.pull`).
"""
