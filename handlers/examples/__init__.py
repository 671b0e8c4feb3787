"""Worked examples of `type: python` handlers; see README.md here."""
