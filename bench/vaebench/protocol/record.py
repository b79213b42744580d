"""The record of one evaluation: every protocol number of one model, with its schema.

Stored flat (one JSON object, one ``metrics.csv`` row): ``L_m`` and ``L_m_mc_se`` for the ladder of k,
the ELBO-surgery terms beside the rest. :meth:`Record.from_flat` checks every field's type, so a damaged
file is named rather than half-read.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields
from typing import Any


class RecordError(ValueError):
    """A stored record does not match the schema; the message names the field."""


@dataclass(frozen=True)
class SurgeryTerms:
    """ELBO surgery over the training split (nats per training point): avg_kl = mutual_info + marginal_kl,
    q(z) the aggregate posterior over all ``n_train`` points; ``_se``: Monte Carlo standard errors over
    ``surgery_samples`` draws from q(z)."""

    reconstruction: float
    avg_kl: float
    mutual_info: float
    marginal_kl: float
    train_elbo: float
    mutual_info_se: float
    marginal_kl_se: float
    mc_avg_kl_se: float
    log_n: float
    n_train: int
    surgery_samples: int


@dataclass(frozen=True)
class Record:
    """One model's protocol numbers. log_likelihood = L_K averaged over the ``n_test`` test points, ``_se``
    its standard error over test points, ``_mc_se`` its Monte Carlo standard error for these points (the
    jackknife over each point's K draws); ``bounds[m]`` = L_m from the same samples; elbo = the mean
    log-weight of the same draws, elbo_gap = L_K - ELBO; active units of the posterior mean.
    ``log_likelihood_jvi``: JVI_1 (Nowozin 2018), L_K with its O(1/K) bias removed (not a bound), with its
    errors; ``log_likelihood_bias`` = JVI_1 - L_K, the estimated bias of L_K (>= 0). ``khat_unreliable``: the
    fraction of test points whose Pareto k-hat exceeds 0.7 (``khat_undefined`` points have none),
    ``median_ess`` the median effective sample size, ``worst_khat`` "index:k-hat" of the worst points.
    Fields with defaults are absent from records of protocol version 1."""

    model: str
    dataset: str
    n_test: int
    k: int
    seed: int
    log_likelihood: float
    log_likelihood_se: float
    elbo: float
    elbo_se: float
    elbo_gap: float
    elbo_gap_se: float
    log_likelihood_mc_se: float
    bounds: dict[int, float]
    bounds_mc_se: dict[int, float]
    active_units: int | str
    active_units_total: int
    active_units_set: str
    surgery: SurgeryTerms | None
    surgery_note: str
    device: str
    backend: str
    torch: str
    protocol_version: int
    wall_time_s: float
    elbo_mc_se: float = math.nan
    log_likelihood_jvi: float = math.nan
    log_likelihood_jvi_se: float = math.nan
    log_likelihood_jvi_mc_se: float = math.nan
    log_likelihood_bias: float = math.nan
    khat_unreliable: float = math.nan
    khat_undefined: int = 0
    median_ess: float = math.nan
    worst_khat: str = ""
    code_version: str = ""
    source_sha256: str = ""
    checkpoint_sha256: str = ""

    def to_flat(self) -> dict[str, Any]:
        """The record as one flat JSON object (the ``metrics.csv`` columns)."""
        flat: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "bounds":
                flat.update({f"L_{m}": v for m, v in value.items()})
            elif f.name == "bounds_mc_se":
                flat.update({f"L_{m}_mc_se": v for m, v in value.items()})
            elif f.name == "surgery":
                if value is not None:
                    flat.update({s.name: getattr(value, s.name) for s in fields(SurgeryTerms)})
            elif f.name == "surgery_note":
                if value:
                    flat[f.name] = value
            else:
                flat[f.name] = value
        return flat

    @classmethod
    def from_flat(cls, flat: Any) -> Record:
        """Parse :meth:`to_flat`'s form; a :class:`RecordError` naming the first bad or missing field."""
        if not isinstance(flat, dict):
            raise RecordError(f"a record is a JSON object, not {type(flat).__name__}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in ("bounds", "bounds_mc_se", "surgery"):
                continue
            if f.name == "surgery_note":
                values[f.name] = _checked(f.name, flat.get(f.name, ""), "str")
                continue
            if f.name not in flat:
                if f.default is not MISSING:
                    continue
                raise RecordError(f"missing field {f.name!r}")
            values[f.name] = _checked(f.name, flat[f.name], f.type)
        if not values["model"]:
            raise RecordError("field 'model' is empty")
        suffix = "_mc_se"
        values["bounds"] = {
            int(key[2:]): _checked(key, v, "float")
            for key, v in flat.items()
            if key.startswith("L_") and key[2:].isdigit()
        }
        values["bounds_mc_se"] = {
            int(key[2 : -len(suffix)]): _checked(key, v, "float")
            for key, v in flat.items()
            if key.startswith("L_") and key.endswith(suffix) and key[2 : -len(suffix)].isdigit()
        }
        for name in ("log_likelihood", "elbo"):
            if not math.isfinite(values[name]):
                raise RecordError(f"field {name!r} is {values[name]}, not a finite number")
        if not all(math.isfinite(v) for v in values["bounds"].values()):
            raise RecordError("an L_k field is NaN or infinite")
        errors = [  # NaN is allowed: an error that is undefined (one test point, too few draws to jackknife)
            k for k, v in flat.items() if k.endswith("_se") and isinstance(v, int | float) and (v < 0 or v == math.inf)
        ]
        if errors:
            raise RecordError(f"field {errors[0]!r} = {flat[errors[0]]} is not a standard error (>= 0, finite)")
        if values["k"] not in values["bounds"]:
            raise RecordError(f"no L_{values['k']} for k = {values['k']}")
        values["surgery"] = None
        if "mutual_info" in flat:
            values["surgery"] = SurgeryTerms(
                **{s.name: _checked(s.name, flat.get(s.name), s.type) for s in fields(SurgeryTerms)}
            )
        return cls(**values)


def _checked(name: str, value: Any, kind: str) -> Any:
    """``value`` if it fits the annotation ``kind`` (int, float, str, ``int | str``), else a RecordError."""
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "int | str": isinstance(value, int | str) and not isinstance(value, bool),
    }[kind]
    if not ok:
        raise RecordError(f"field {name!r} = {value!r} is not a {kind}")
    if kind == "float":
        value = float(value)
        if math.isinf(value):
            raise RecordError(f"field {name!r} is infinite")
    return value
