"""Placeholder: sparse storage is being written."""
