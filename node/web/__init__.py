"""The parts of the node's HTTP server beyond health and metrics (:mod:`node.http` serves them).

* :mod:`node.web.auth`: who may call the node (API tokens, users with hashed passwords).
* :mod:`node.web.stow`: STOW-RS intake (PS3.18 10.5) into the same receiver as C-STORE.
* :mod:`node.web.pull`: ``POST /api/pull``, a pull from a configured source (:mod:`node.pull`).
* :mod:`node.web.queries`: what the admin pages and the ``ainode`` commands read (jobs, deliveries,
  models, audit) and the retry of a dead letter, as plain records.
* :mod:`node.web.pages`: the admin pages of a job, the deliveries, the models and the audit log,
  with their JSON API.
"""
