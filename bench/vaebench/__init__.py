"""vaebench: a common evaluation protocol for variational autoencoders.

``vaebench.evaluate(model, "binarized-mnist")`` runs the protocol (the IWAE bound L_5000 as the test
log-likelihood, L_k ladder, ELBO and gap, active units, ELBO surgery) on any object with the model interface
(:mod:`vaebench.core.interface`); ``vaebench.load_model(name)`` loads a trained model of the registry.

Layers, imports pointing down only: ``core`` (model-independent estimators and kernels) <- ``families``
(built-in VAE/HVAE) <- ``protocol`` (data, settings, records, registry, runs) <- ``report`` <- ``cli``;
``studies`` (speed, precision, tiles) sit beside ``report``.
"""

from vaebench.api import evaluate, load_model

__all__ = ["evaluate", "load_model"]
