"""Paths as users write them (local, `~`, URLs through etils), whole-or-absent writes, and verified downloads into the cache."""
