"""What request-time logic refuses, as domain errors: the HTTP edge maps each to its status in one
place (app/api/errors.py), so nothing below the edge knows about HTTP."""

from __future__ import annotations


class Refused(ValueError):
    """The request asks for something this deployment cannot do (answered 422). The message names
    the problem and never repeats client input."""
