"""CKKS/BFV aggregator over a coordinator bundle (context and public key only)."""

from __future__ import annotations

from common.crypto.aggregator import ChunkSum
from common.crypto.keys import CoordinatorBundle
from common.crypto.seal import Ciphertext, SealPublic
from common.crypto.spec import BlobSpec, he_spec
from common.errors import KeyBundleError


class HeAggregator:
    """Adds ciphertext blobs. Built from public material; it has no way to decrypt."""

    def __init__(self, bundle: CoordinatorBundle) -> None:
        if not isinstance(bundle, CoordinatorBundle):
            raise KeyBundleError(
                f"an aggregator needs a coordinator bundle, got {type(bundle).__name__}"
            )
        manifest = bundle.manifest
        self._seal = SealPublic(
            manifest.config, context=bundle.context, public_key=bundle.public_key
        )
        self._spec = he_spec(manifest, self._seal)

    @property
    def scheme(self) -> str:
        return self._spec.scheme

    @property
    def spec(self) -> BlobSpec:
        return self._spec

    def __repr__(self) -> str:
        return f"HeAggregator(scheme={self.scheme!r}, key_id={self._spec.key_id[:12]!r})"

    def new_sum(self) -> ChunkSum[Ciphertext]:
        return ChunkSum(self._spec, self._seal)
