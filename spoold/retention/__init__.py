"""Keeping done/ and failed/ bounded: the retention rules, the prune pass, the spool-wide prune lock."""
