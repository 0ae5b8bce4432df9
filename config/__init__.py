"""The configuration files shipped with ainode: ``node.yaml``, ``routing.yaml`` and ``models.yaml``.

A package only so that the files travel inside the wheel and are found with
:mod:`importlib.resources` wherever ainode is installed (``node.settings``).
They are the defaults: a site names its own files in ``node.yaml``, with
``AINODE_CONFIG`` or ``ainode --config``.
"""
