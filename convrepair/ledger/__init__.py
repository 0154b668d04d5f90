"""Signed repair logs: in-toto statements in DSSE envelopes, reviewer decisions, verification."""
