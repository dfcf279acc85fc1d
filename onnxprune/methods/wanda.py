"""Placeholder: the wanda method is being written."""

EXPORTED = ()
OPTIONS = ()
