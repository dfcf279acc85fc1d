"""Placeholder: the obs method is being written."""

EXPORTED = ()
OPTIONS = ()
