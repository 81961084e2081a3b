"""A hospital's copy of the global model and its server optimizer's state, round by round.

The coordinator publishes each round's encrypted sum; every hospital decrypts it, divides it
into the round's weighted average and applies the run's server optimizer
(``common.server_optimizer``) to get the next global model. The optimizer's state lives only
here, in memory: a hospital that is at round ``r - 1`` advances by the one aggregate announced,
and one that is anywhere else (restarted, or told that the run ends at an earlier round)
replays the stored aggregates of rounds 1..r in order, so it ends with exactly the model and
state of a hospital that never stopped.

Every aggregate is checked before it is decrypted: its header must say it is the coordinator's
sum of that round of this run over at least ``MIN_CONTRIBUTORS`` updates. The one an
announcement names is checked against its SHA-256; the replayed ones against the chain of all
of them the coordinator signed (``common.protocol.history``), and the rebuilt model is kept only
if that chain matches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from common.crypto import AGGREGATE, Binding, Cipher
from common.crypto.blob import COORDINATOR_SENDER
from common.errors import ProtocolError
from common.fedavg import MIN_CONTRIBUTORS, Sanity, averaging_error, payload_size, sane_average
from common.protocol import layout
from common.protocol.history import EMPTY_CHAIN, extend_chain
from common.server_optimizer import ServerOptimizerConfig, ServerState, initial_state, step
from common.store import Store, get_verified, sha256_hex

#: Told the round and the error bound of a decrypted sum, as a multiple of one averaged weight
#: (``common.fedavg.averaging_error``).
PrecisionCallback = Callable[[int, float], None]


@dataclass(frozen=True, eq=False)
class GlobalModel:
    """The global model after round ``round`` (0: the initial model) of ``run``, the server
    optimizer's state that produced it, and the chain of the aggregates it was built from."""

    run: str
    round: int
    weights: np.ndarray  # float64, what the server optimizer steps from
    state: ServerState
    chain: str
    sha256: str | None  # of round ``round``'s aggregate (None: round 0)

    @property
    def trainable(self) -> np.ndarray:
        """The weights as the trainer takes them (float32)."""
        return self.weights.astype(np.float32)


class GlobalModels:
    """Builds the global model of any round of a run from its aggregates; keeps the latest."""

    def __init__(
        self,
        *,
        store: Store,
        cipher: Cipher,
        initial_weights: np.ndarray,
        server_optimizer: ServerOptimizerConfig,
        sanity: Sanity,
        on_precision: PrecisionCallback,
    ) -> None:
        self._store = store
        self._cipher = cipher
        self._sanity = sanity
        self._on_precision = on_precision
        weights = np.asarray(initial_weights, dtype=np.float32).astype(np.float64)
        state = initial_state(server_optimizer, weights.shape[0])
        self._initial = GlobalModel(
            run="", round=0, weights=weights, state=state, chain=EMPTY_CHAIN, sha256=None
        )
        self.current = self._initial

    def after(
        self, run: str, round_: int, ref: str | None, sha256: str | None, chain: str | None
    ) -> GlobalModel:
        """The global model after round ``round_`` of ``run``, whose aggregate ``ref`` (None in
        round 0) has digest ``sha256``; ``chain`` is the signed chain of rounds 1..``round_``
        (None: not given, so only the next round can be built, not a replay)."""
        if round_ == 0:
            if ref is not None or sha256 is not None:
                raise ProtocolError(f"round 0 has no aggregate, but {ref} was named")
            return self._initial
        if ref is None or sha256 is None:
            raise ProtocolError(f"round {round_}'s global model was named without its aggregate")
        here = self.current
        asked_again = here.run == run and here.round == round_ and here.sha256 == sha256
        if asked_again and chain in (None, here.chain):
            return here  # a re-announcement
        one_behind = here.run == run and here.round == round_ - 1
        if one_behind and chain in (None, extend_chain(here.chain, sha256)):
            self.current = self._advance(here, run, round_, ref, sha256)  # the usual case
            return self.current
        if chain is None and here.state.config.is_plain_fedavg:
            # A coordinator from before server optimizers signs no history. Plain FedAvg needs
            # none: the global model is the round's average, judged against the model at hand.
            base = replace(here, run=run, round=round_ - 1)
            self.current = self._advance(base, run, round_, ref, sha256)
            return self.current
        self.current = self._replay(run, round_, ref, sha256, chain)
        return self.current

    def _replay(
        self, run: str, round_: int, ref: str, sha256: str, chain: str | None
    ) -> GlobalModel:
        if chain is None and round_ > 1:
            raise ProtocolError(
                f"cannot rebuild the global model of round {round_}: the announcement carries "
                "no history digest to check the stored aggregates of the rounds before against"
            )
        model = self._initial
        for k in range(1, round_):
            model = self._advance(model, run, k, layout.aggregate_key(run, k), None)
        model = self._advance(model, run, round_, ref, sha256)
        if chain is not None and model.chain != chain:
            raise ProtocolError(
                f"the stored aggregates of rounds 1..{round_} of run {run} are not the ones the "
                "coordinator announced (their chain differs from the signed history digest)"
            )
        return model

    def _advance(
        self, model: GlobalModel, run: str, round_: int, ref: str, sha256: str | None
    ) -> GlobalModel:
        """``model`` one round on, by the aggregate ``ref`` of ``round_`` (checked against
        ``sha256`` when given, else only hashed for the chain)."""
        values = payload_size(model.weights.shape[0])
        limit = self._cipher.spec.max_blob_bytes(values)
        if sha256 is None:
            blob = self._store.get(ref, max_bytes=limit)
            sha256 = sha256_hex(blob)
        else:
            blob = get_verified(self._store, ref, sha256, max_bytes=limit)
        header = self._cipher.spec.header(blob)
        expected = Binding(run=run, round=round_, sender=COORDINATOR_SENDER)
        if header.kind != AGGREGATE or header.binding != expected:
            raise ProtocolError(
                f"{ref} is a {header.kind} of {header.binding}, not the aggregate of {expected}"
            )
        if header.summands < MIN_CONTRIBUTORS:
            raise ProtocolError(
                f"{ref} sums {header.summands} updates; an aggregate needs {MIN_CONTRIBUTORS}"
            )
        total = self._cipher.decrypt(blob)
        self._on_precision(
            round_, averaging_error(total, self._cipher.error_bound(header.summands))
        )
        average = sane_average(total, header.summands, model.weights, self._sanity)
        weights, state = step(model.weights, average, model.state)
        if not np.all(np.isfinite(weights.astype(np.float32))):
            raise ProtocolError(
                f"global update of round {round_} refused: the server optimizer's model holds "
                "values that are not finite"
            )
        return GlobalModel(
            run=run,
            round=round_,
            weights=weights,
            state=state,
            chain=extend_chain(model.chain, sha256),
            sha256=sha256,
        )
