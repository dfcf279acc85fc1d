"""Placeholder: the lobs method is being written."""

EXPORTED = ()
OPTIONS = ()
