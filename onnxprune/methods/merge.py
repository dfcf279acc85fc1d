"""Placeholder: the merge method is being written."""

EXPORTED = ()
OPTIONS = ()
