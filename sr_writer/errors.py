"""The exceptions of :mod:`sr_writer`: one tree, so that a caller can catch every refusal of a writer at once.

::

    Exception
     +-- WriterError                    a writer refuses to write an object
          +-- ParameterError            (also ValueError) an argument that configures the object is invalid:
          |                             a SeriesParams value (UID root, series or instance number, a text that
          |                             is no LO), a KOS title or description, a slice label text
          +-- ParameterTypeError        (also TypeError) such an argument is of the wrong type
          +-- InvalidResultError        (also ValueError) the result or its sources cannot be encoded: they
          |                             contradict each other (an image not among the sources, another
          |                             study), a value is out of range (a probability outside 0..1, a box
          |                             outside its image, a mask that is not binary), a name does not fit its
          |                             VR, or there is nothing to write
          +-- UnknownConceptError       (also KeyError) a label or key with no concept in sr_writer.codes
          +-- InvalidSourceValue        (also ValueError) a source attribute's value its VR does not allow;
                                        raised and caught inside sr_writer.source_attributes.clean_source,
                                        which drops or corrects the attribute and records a
                                        SourceAttributeIssue: it never reaches a writer's caller

Each subclass is also the built-in exception it refines, so code that catches ``ValueError``,
``TypeError`` or ``KeyError`` around a writer (as highdicom's own constructors raise them) keeps
working; messages name the argument or attribute and never a patient's value.
"""

from __future__ import annotations

__all__ = [
    "InvalidResultError",
    "InvalidSourceValue",
    "ParameterError",
    "ParameterTypeError",
    "UnknownConceptError",
    "WriterError",
]


class WriterError(Exception):
    """Base of every exception a writer of :mod:`sr_writer` raises."""


class ParameterError(WriterError, ValueError):
    """An argument that configures the object (:class:`sr_writer.common.SeriesParams`, a KOS title, a label
    text) has an invalid value."""


class ParameterTypeError(WriterError, TypeError):
    """An argument that configures the object is of the wrong type."""


class InvalidResultError(WriterError, ValueError):
    """The result or its sources cannot be encoded as the object asks (inconsistent, out of range, or empty)."""


class UnknownConceptError(WriterError, KeyError):
    """A finding label or concept key that :mod:`sr_writer.codes` does not define."""


class InvalidSourceValue(WriterError, ValueError):
    """A value its VR does not allow in a source attribute; the message is the reason, never the value.

    Internal to :func:`sr_writer.source_attributes.clean_source`, which drops or corrects the attribute.
    """
