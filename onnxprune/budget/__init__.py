"""Pruning to a budget (`--target params|macs|latency=FRACTION`): cost models and the allocation of
removals across groups by measured damage."""
