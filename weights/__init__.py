"""The models shipped with ainode: one folder per model (``model.json``, its weights, its model card).

A package only so that the folders travel inside the wheel and are found with
:mod:`importlib.resources` wherever ainode is installed (``node.settings``:
the default ``models_dir``). Weights are data, never imported.
"""
