"""The round protocol's shared definitions: messages, signatures, store layout, run config.

Both roles speak this package: ``messages`` (the versioned, validated wire schema), ``signing``
(Ed25519 identities, the trust file and the signed envelope), ``layout`` (where each blob of a run
lives in the store) and ``runconfig`` (the digest every participant must match).
"""
