"""Signed repair logs (in-toto statements in DSSE envelopes), reviewer decisions in a per-registry
transparency log (RFC 9162 Merkle tree, signed checkpoints), promotion into a Triton repository
with an OpenSSF model-signing bundle, and the verification a deployment pipeline runs."""
