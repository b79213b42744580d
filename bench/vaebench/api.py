"""The Python entry point: evaluate any model with the interface under the protocol, in one call."""

from __future__ import annotations

import os

import pandas as pd
import torch

from vaebench.protocol import registry
from vaebench.protocol.datasets import Dataset, load_dataset
from vaebench.protocol.evaluate import evaluate as run_protocol
from vaebench.protocol.record import Record
from vaebench.protocol.runner import resolve_device
from vaebench.protocol.settings import SURGERY_SAMPLES, Settings


def evaluate(
    model: object,
    dataset: str | Dataset,
    k: int = 5000,
    n_test: int | None = None,
    device: str = "auto",
    *,
    seed: int = 0,
    surgery_samples: int = SURGERY_SAMPLES,
    batch_size: int = 100,
    data_dir: str | os.PathLike | None = None,
    name: str = "model",
) -> tuple[Record, pd.DataFrame]:
    """The protocol on ``model`` (``posterior(x)``, ``prior()``, ``likelihood(z)``; see
    :mod:`vaebench.core.interface`) and ``dataset`` (a name such as ``"binarized-mnist"`` or a
    :class:`~vaebench.protocol.datasets.Dataset`): the record (L_K as log p(x) with its standard errors, L_k
    for the k that divide K, ELBO, gap, JVI_1, k-hat, active units, ELBO surgery) and the per-test-point L_K,
    its Monte Carlo error, JVI_1, ELBO, ESS and k-hat,
    indexed by test index. Seeded: the same call gives the same numbers."""
    settings = Settings(k=k, n_test=n_test, seed=seed, surgery_samples=surgery_samples, batch_size=batch_size)
    data = load_dataset(dataset, data_dir) if isinstance(dataset, str) else dataset
    with torch.no_grad():
        record, per_example = run_protocol(model, data, settings, device=resolve_device(device), name=name)
    frame = pd.DataFrame({key: value.numpy() for key, value in per_example.items()}).set_index("test_index")
    return record, frame


def load_model(name: str, registry_dirs: list[str | os.PathLike] | None = None) -> object:
    """A trained model of the registry by name (the built-in registry, ``$VAEBENCH_REGISTRY`` and
    ``registry_dirs``), loaded without executing code from its checkpoint."""
    entries = registry.load_registry(registry.registry_dirs(registry_dirs or ()))
    return registry.load(registry.get(entries, name))
