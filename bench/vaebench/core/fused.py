"""Fused log-weights through ``torch.compile`` (inductor): the ``compiled`` backend.

log w = log p(x|z) + log p(z) - log q(z|x) for samples z [K, B, d] is, on the CPU, a few matrix products
(the decoder's layers, the mixture prior's [z^2, z] product) and elementwise work between them: the gated
layers' bias and sigmoid, the softplus over the [K, B, D] logits and its sum, the mixture's logsumexp, the
Gaussian log-densities. Eagerly each elementwise step is its own pass over memory; inductor fuses each run
of them into one vectorised C++ loop that reads the product's output once (the products themselves stay
oneDNN/MKL calls). :func:`compiled_log_weights` compiles :func:`log_weight_terms`, the ``torch`` backend's
formula with three changes that only move rounding (``tests/core/test_fused.py`` bounds the difference):

- the Bernoulli term sum_j x_j l_j - softplus(l_j) takes one logarithm per 49 pixels instead of a log1p per
  pixel (:func:`bernoulli_terms`);
- a mixture prior's weights and constants are computed once, outside the graph, with the components padded
  to a multiple of 16 (:class:`MixtureTable`);
- every CPU ``addmm(bias, ...)`` becomes ``mm + bias``, the bias folded into the next elementwise loop
  (:func:`_unfuse_bias_addmm`).

On this project's 2-core CPU (``python -m vaebench.studies.speed``) that takes the VampPrior MNIST model's
L_5000 from about 59 to 44 ms per image; of the 44, the matrix products are 27 (1.02x their FLOPs at the
measured GEMM rate), the fused elementwise loops 8, the seeded noise 3-4 and Python and dynamo overhead the
rest.

What is compiled, and when it falls back:

- Models that expose ``likelihood_features(z)`` and ``likelihood_head`` (an ``nn.Linear``: every Bernoulli model of
  :mod:`vaebench.families`) have the Bernoulli term written out as above. Any other model (an outside
  model) has its own ``model.likelihood(z).log_prob(x)`` traced and compiled, as are ``prior.log_prob(z)``
  and ``q.log_prob(z)`` for every prior and posterior: whatever dynamo cannot trace runs eagerly between
  compiled pieces (a graph break, correct but less fused).
- One graph per model structure (model class and sizes, distribution classes): the first call compiles
  (10-30 s on 2 CPU cores; inductor caches the kernels on disk, so a later process pays less), later calls
  reuse it. The sample dimension of z is dynamic from the first call (``maybe_mark_dynamic``), so every
  chunk size runs the same graph; the first batch of another size recompiles once with the batch size
  symbolic (dynamo's automatic dynamic shapes), and no size after that compiles again. Every other size
  (latent, pixels, hidden units, mixture components) stays static: a symbolic size that happened to equal
  another (500 components, chunks of 500 samples) would be tied to it and recompile when they part.
- Where compilation cannot work (this torch has no ``torch.compile`` or dynamo does not support this
  Python; no C++ compiler for CPU tensors) or fails (an error while tracing or compiling), the call runs
  the eager ``torch`` formula instead and says so once per reason with a :class:`CompileFallbackWarning`;
  a model whose compilation failed stays eager for the rest of the process (no retry per batch).
"""

from __future__ import annotations

import math
import warnings
import weakref

import torch
from torch import nn
from torch.distributions import Distribution
from torch.nn import functional as F

from vaebench.core.mixture import DiagonalGaussianMixture

COMPILED = "compiled"
# Shape patterns one model structure may compile for: static first, then one dynamic graph, with room for
# a few distinct structures (VAE/HVAE, priors) evaluated in one process. Beyond it dynamo runs eagerly.
RECOMPILE_LIMIT = 64

_compiled_fn = None  # the torch.compile'd log_weight_terms, built on first use
_problem: list[str | None] = []  # [why compilation cannot run here] once checked
_failed: dict[tuple, str] = {}  # structure key -> why compiling it failed
_warned: set[str] = set()


class CompileFallbackWarning(RuntimeWarning):
    """``backend="compiled"`` ran the eager formula instead; the message says why."""


def has_bernoulli_head(model: object) -> bool:
    """True when p(x|z) = Bernoulli(logits = model.likelihood_head(model.likelihood_features(z)))."""
    return callable(getattr(model, "likelihood_features", None)) and isinstance(
        getattr(model, "likelihood_head", None), nn.Linear
    )


def log_weight_terms(model, q: Distribution, prior: Distribution, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) + log p(z) - log q(z|x) for z [K, B, d], x [B, D] -> [K, B]: the formula compiled.

    With a Bernoulli head, log p(x|z) = sum_j x_j l_j - softplus(l_j) over the logits l (:func:`bernoulli_terms`);
    otherwise the model's own ``likelihood(z).log_prob(x)``. log p(z) and log q(z|x) are the distributions'
    ``log_prob`` (:class:`MixtureTable` stands in for a ``DiagonalGaussianMixture`` prior).
    """
    if has_bernoulli_head(model):
        head = model.likelihood_head
        log_lik = bernoulli_terms(F.linear(model.likelihood_features(z), head.weight, head.bias), x)
    else:
        log_lik = model.likelihood(z).log_prob(x)
    return log_lik + prior.log_prob(z) - q.log_prob(z)


class MixtureTable:
    """A ``DiagonalGaussianMixture``'s log-density as one product and a logsumexp, its [2d, C] weights and [C]
    constants computed before the compiled graph (:func:`vaebench.core.mixture.component_log_prob`'s formula).

    Computed outside, the constants reach the graph as a tensor; computed inside, inductor folds their
    formula into both loops of the logsumexp and recomputes it for every sample. The components are padded to
    a multiple of :data:`LANES` by components of weight zero (constant -inf, which the logsumexp drops
    exactly): the [S, 2d] x [2d, C] product ran at 111 GFLOP/s for the VampPrior's C = 500 and at 172 for
    512 on this project's CPU (oneDNN tiles the output in 16-float columns), 1.2 ms less per image at
    K = 5000 for 2.4% more FLOPs. Used for up to :data:`MAX_TABLE` components (the [S, C] table is formed)."""

    def __init__(self, prior: DiagonalGaussianMixture):
        loc, scale = prior.loc, prior.scale
        precision = scale.pow(-2)
        weights = torch.cat([-0.5 * precision, loc * precision], dim=1)  # [C, 2d]
        const = -0.5 * (loc.pow(2) * precision).sum(1) - scale.log().sum(1) - 0.5 * loc.shape[1] * math.log(2 * math.pi)
        const = const + prior.log_mix
        pad = (-loc.shape[0]) % LANES
        self.weights = F.pad(weights, (0, 0, 0, pad)).T.contiguous()  # [2d, C + pad]
        self.const = F.pad(const, (0, pad), value=float("-inf"))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [...]."""
        features = torch.cat([z.pow(2), z], dim=-1)
        return torch.logsumexp(features @ self.weights + self.const, dim=-1)


MAX_TABLE = 4096  # vaebench.core.mixture's chunk over components: more are left to the prior's own log_prob
_tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # prior -> (its tensors' versions, table)


def mixture_table(prior: DiagonalGaussianMixture) -> MixtureTable:
    """The :class:`MixtureTable` of ``prior``, kept with the prior while its tensors are unchanged (same
    objects, same version counters): a chunked evaluation passes one prior to every chunk, and building the
    table took 0.7 ms a chunk, 2% of the compiled evaluation. Inference-mode tensors, which keep no
    version counter, get a new table every call."""
    tensors = (prior.loc, prior.scale, prior.log_mix)
    try:
        versions = tuple((id(t), t._version) for t in tensors)
    except RuntimeError:  # inference tensors
        return MixtureTable(prior)
    cached = _tables.get(prior)
    if cached is None or cached[0] != versions:
        cached = _tables[prior] = (versions, MixtureTable(prior))
    return cached[1]


LANES = 16  # float32 lanes of an AVX-512 register: the products below run one per lane
MAX_FACTORS = 64  # factors (1 + u) <= 2 per product: at most 2**64, far from float32's 2**128


def bernoulli_terms(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_j x_j l_j - softplus(l_j) over the last dimension, with one logarithm per 49 pixels instead of one
    log1p per pixel.

    softplus(l) = max(l, 0) + log1p(u), u = exp(-|l|) in (0, 1], and sum_j log1p(u_j) = log prod_j (1 + u_j).
    The factors (1 + u_j) lie in (1, 2], so products of up to :data:`MAX_FACTORS` of them stay finite in float32;
    the pixels are laid out as [groups, factors, LANES] and multiplied along ``factors``, so the vectorised
    loop keeps one running product per lane, and 16 logarithms per group replace D log1p's (the
    log1p was 3/4 of the time of the eager softplus pass over the [K, B, 784] logits on this project's CPU).
    Rounding: each factor and each product rounds once, so the sum of logarithms is off by at most about
    2 D u (u = 2**-24) in absolute value, against the eager path's per-term and summation rounding of the
    same order (``tests/core/test_fused.py`` bounds the difference). Padding factors are 1.
    """
    n = logits.shape[-1]
    groups = -(-n // (LANES * MAX_FACTORS))
    factors = -(-n // (groups * LANES))
    pad = groups * factors * LANES - n
    data = x * logits - logits.clamp(min=0)
    ones = 1 + torch.exp(-logits.abs())
    if pad:
        data, ones = F.pad(data, (0, pad)), F.pad(ones, (0, pad), value=1.0)
    shape = (*logits.shape[:-1], groups, factors, LANES)
    # both reduced along ``factors`` first, in one loop over the logits, then across groups and lanes
    lanes = data.reshape(shape).sum(-2) - ones.reshape(shape).prod(-2).log()
    return lanes.sum((-2, -1))


def _find_problem() -> str | None:
    if not callable(getattr(torch, "compile", None)):
        return f"torch {torch.__version__} has no torch.compile (PyTorch 2.0 or later has)"
    try:
        import torch._dynamo as dynamo

        if not dynamo.is_dynamo_supported():
            return f"torch.compile (dynamo) does not support this Python with torch {torch.__version__}"
    except Exception as err:  # an import error inside torch is a reason too
        return f"torch._dynamo cannot be imported ({type(err).__name__}: {err})"
    return None


_cpu_problems: dict[object, str | None] = {}  # inductor's C++ compiler setting -> the verdict on it


def _cpu_compiler_problem() -> str | None:
    """Why inductor cannot build C++ kernels here (no C++ compiler), None when it can or cannot tell; checked
    once per value of inductor's ``cpp.cxx`` setting."""
    try:
        from torch._inductor import config, cpp_builder
    except Exception:  # a private module that moved: leave the verdict to the compile itself
        return None
    setting = repr(getattr(config.cpp, "cxx", None))
    if setting not in _cpu_problems:
        try:
            cpp_builder.get_cpp_compiler()
            _cpu_problems[setting] = None
        except Exception as err:
            _cpu_problems[setting] = (
                f"inductor needs a C++ compiler for CPU kernels and found none ({type(err).__name__}); "
                "install g++ (or set CXX) to use it"
            )
    return _cpu_problems[setting]


def compile_problem(device: torch.device | str = "cpu") -> str | None:
    """Why ``backend="compiled"`` cannot compile for tensors on ``device``, None when it can (it may still
    fail on a given model, and then falls back too)."""
    if not _problem:
        _problem.append(_find_problem())
    if _problem[0] is not None:
        return _problem[0]
    if torch.device(device).type == "cpu":
        return _cpu_compiler_problem()
    return None


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"backend='compiled' runs the eager torch formula instead: {reason}", CompileFallbackWarning, stacklevel=3
        )


def _unfuse_bias_addmm(graph: torch.fx.Graph) -> None:
    """Rewrite CPU ``addmm(bias, a, b)`` as ``mm(a, b) + bias`` in inductor's post-grad graph.

    oneDNN's addmm first copies the broadcast bias into the whole output and then accumulates the product
    onto it: a full extra pass over every layer's output (14% of the compiled log-weight on this project's
    CPU). As a separate add, inductor fuses the bias into the elementwise loop that reads the product anyway
    (the gate's sigmoid, the softplus). Inductor does the same rewrite on GPUs only, and fuses mm + add back
    into addmm on the CPU, so this runs after its own patterns."""
    addmm = torch.ops.aten.addmm.default
    for node in list(graph.find_nodes(op="call_function", target=addmm)):
        bias, a, b = node.args[:3]
        value = node.meta.get("val")
        if (
            node.kwargs.get("beta", 1) != 1
            or node.kwargs.get("alpha", 1) != 1
            or value is None
            or value.device.type != "cpu"
            or not all(isinstance(arg, torch.fx.Node) and "val" in arg.meta for arg in (bias, a, b))
        ):
            continue
        with graph.inserting_before(node):
            product = graph.call_function(torch.ops.aten.mm.default, (a, b))
            product.meta["val"] = torch.ops.aten.mm.default(a.meta["val"], b.meta["val"])
            total = graph.call_function(torch.ops.aten.add.Tensor, (product, bias))
            total.meta["val"] = value
        node.replace_all_uses_with(total)
        graph.erase_node(node)


def _bias_pass():
    """:func:`_unfuse_bias_addmm` as an inductor custom pass (its uuid, this file's hash, keys the cache)."""
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    class UnfuseBiasAddmm(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            _unfuse_bias_addmm(graph)

        def uuid(self) -> bytes:
            return get_hash_for_files((__file__,))

    return UnfuseBiasAddmm()


def _compiled():
    global _compiled_fn
    if _compiled_fn is None:
        import torch._dynamo as dynamo

        # dynamo counts every graph of log_weight_terms' code object against one limit; raise it so that
        # several model structures in one process each keep their compiled graphs.
        limit = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(dynamo.config, limit, max(getattr(dynamo.config, limit), RECOMPILE_LIMIT))
        options = {}
        try:
            options["post_grad_custom_post_pass"] = _bias_pass()
        except ImportError:  # an older inductor without custom passes: addmm stays fused, still correct
            pass
        _compiled_fn = torch.compile(log_weight_terms, options=options)
    return _compiled_fn


def _structure(model, q: Distribution, prior: Distribution, z: torch.Tensor) -> tuple:
    return (type(model), type(q), type(prior), z.device.type, z.dtype)


def compiled_log_weights(model, q: Distribution, prior: Distribution, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """:func:`log_weight_terms` compiled by inductor, or eagerly where it cannot be (said once; see the module
    docstring): z [K, B, d], x [B, D] -> [K, B]."""
    problem = compile_problem(z.device)
    key = _structure(model, q, prior, z)
    if problem is None:
        problem = _failed.get(key)
    if problem is None:
        # dynamo guards on the base of a view (a slice of a bigger batch): the same call on a slice and on a
        # whole tensor would compile twice. Copies of x [B, D] and z [K, B, d] cost little next to the decoder.
        x, z = (t.clone() if t._is_view() else t for t in (x, z))
        try:
            table = isinstance(prior, DiagonalGaussianMixture) and prior.loc.shape[0] <= MAX_TABLE
            compiled = _compiled()
            torch._dynamo.maybe_mark_dynamic(z, 0)  # the chunk's sample count: any K runs the same graph
            return compiled(model, q, mixture_table(prior) if table else prior, z, x)
        except Exception as err:  # tracing or compiling failed: the eager formula decides what is a real error
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            problem = _failed[key] = f"compiling {type(model).__name__} failed ({type(err).__name__}: {first})"
    _warn_once(problem)
    return eager_log_weights(model, q, prior, z, x)


def eager_log_weights(model, q: Distribution, prior: Distribution, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The ``torch`` backend's formula (the fallback): the Bernoulli data term as h . (W^T x) + b . x."""
    from vaebench.core.estimators import log_weights_of_samples

    return log_weights_of_samples(model, q, prior, z, x, backend="torch")
