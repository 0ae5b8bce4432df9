"""What every layer of the node may import: plain result types and DICOM tables.

- :mod:`core.findings` — the plain result data that models produce and writers encode;
- :mod:`core.status` — the DIMSE status codes the node uses, in one table;
- :mod:`core.sop` — the SOP classes of the objects the node writes and never routes;
- :mod:`core.identity` — the Manufacturer every object the node writes carries;

``core`` imports nothing else of this repository, so ``dimse``, ``models``,
``sr_writer`` and ``node`` can all depend on it without depending on each other.
"""
