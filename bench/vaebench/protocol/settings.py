"""The protocol's settings: one frozen object that is validated once and is the results' cache key."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vaebench.core.estimators import BACKENDS
from vaebench.core.noise import MAX_SEED

# 2: the Monte Carlo error of L_K by the jackknife, the ELBO from all K draws, JVI_1, k-hat and ESS per point
PROTOCOL_VERSION = 2
LADDER = (1, 5, 50, 500, 5000)  # the L_k reported beside L_K, for every k that divides K
MAX_K = 1_000_000  # K=5000 takes 20-45 min a model on 2 CPU cores; the time grows linearly in K
MAX_SURGERY_SAMPLES = 1_000_000  # each draw scores the whole training set's aggregate posterior
SURGERY_SAMPLES = 10_000


class SettingsError(ValueError):
    """A protocol setting out of range; the message names the option and its valid range."""


@dataclass(frozen=True)
class Settings:
    """How the protocol runs. ``k``: importance samples per test point (L_K is the test log-likelihood);
    ``n_test``: a fixed random sample of that many test points (None: all); ``seed``: of the importance
    and ELBO-surgery draws; ``surgery_samples``: draws from q(z) for the ELBO-surgery expectations;
    ``batch_size``, ``chunk_size`` (samples per chunk; None: what fits the memory budget) and
    ``backend`` (one of ``vaebench.core.estimators.BACKENDS``) change speed and rounding only, so they
    are not in :meth:`key`."""

    k: int = 5000
    n_test: int | None = None
    seed: int = 0
    surgery_samples: int = SURGERY_SAMPLES
    batch_size: int = 100
    chunk_size: int | None = None
    backend: str = "torch"

    def __post_init__(self) -> None:
        bounds = {
            "k": (1, MAX_K),
            "seed": (0, MAX_SEED),
            "surgery_samples": (1, MAX_SURGERY_SAMPLES),
            "batch_size": (1, 100_000),
            "n_test": (1, None),
            "chunk_size": (1, None),
        }
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if value is None and name in ("n_test", "chunk_size"):
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise SettingsError(f"--{name.replace('_', '-')} {value!r}: must be a whole number")
            if value < low or (high is not None and value > high):
                upper = f"..{high:,}" if high is not None else " or more"
                raise SettingsError(f"--{name.replace('_', '-')} {value:,}: use {low}{upper}")
        if self.backend not in BACKENDS:
            raise SettingsError(f"--backend {self.backend!r}: use one of {', '.join(BACKENDS)}")

    @property
    def ladder(self) -> tuple[int, ...]:
        """The k reported: every rung of :data:`LADDER` below K that divides K, then K itself."""
        return tuple(m for m in LADDER if m < self.k and self.k % m == 0) + (self.k,)

    def key(self, n_total: int) -> dict[str, int]:
        """What determines the numbers (with the checkpoint and the data): protocol version, k, the number
        of test points evaluated (of ``n_total``), seed and surgery draws."""
        fields = asdict(self)
        return {
            "protocol_version": PROTOCOL_VERSION,
            "k": self.k,
            "n_test": self.n_test or n_total,
            "seed": self.seed,
            "surgery_samples": fields["surgery_samples"],
        }
