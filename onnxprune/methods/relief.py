"""Placeholder: the relief method is being written."""

EXPORTED = ()
OPTIONS = ()
