"""The replica side of the JAX replica backends: one process, W host CPU devices, one jitted step per shape.

Started by `ReplicaGroup("bnconf.adapters.jax_replica_worker:serve", processes=1, env=...)` with
XLA_FLAGS=--xla_force_host_platform_device_count=4 in its environment, so JAX (imported here, never in the
parent) sees 4 CPU devices; a world of W replicas is a `Mesh` of the first W of them with axis "replica".

A step runs under `jax.shard_map` over that mesh: each device holds one replica's shard (rows padded to the
largest shard), runs the library's batch norm in training mode with its cross-replica axis set to
"replica", and, when dy shards are given, takes `jax.vjp` of its own output with its own dy shard:

    flax.linen  nn.BatchNorm(axis_name="replica").apply(..., mask=rows, mutable=["batch_stats"])
    flax.nnx    nnx.BatchNorm(axis_name="replica")(x, mask=rows) after model.train()
    haiku       hk.BatchNorm(cross_replica_axis="replica") through hk.transform_with_state
    equinox     eqx.nn.BatchNorm(axis_name=("batch", "replica"), mode="batch") vmapped over the rows ("batch")

Gradients of the replicated gamma and beta: they enter shard_map replicated (in_specs P()), and under
shard_map's default check_vma=True a replicated value used by per-replica computation is implicitly
`pvary`-ed, whose transpose is `psum`. So the vjp each replica takes returns, on every replica, the sum over
replicas of the per-replica gradients: the gradient of the sum of the replicas' losses, with no explicit
psum (Flax linen, nnx, Haiku; checked against single-device batch norm of the concatenation in
tests/adapters/test_jax_replicas.py). Equinox needs check_vma=False: its `lax.pmean(mean, ("batch",
"replica"))` mixes the vmap axis with the mesh axis, which the vma check refuses ("psum can only accept
axis_name which corresponds to one of varying ... state of the input"); without the check there is no implicit
pvary, the vjp gives each replica its own gradient, and the worker psums dgamma and dbeta over "replica" as a
pmap-style training step does. dx needs nothing: the transpose of the statistics' pmean spreads every
replica's contribution. The worker returns replica 0's dgamma/dbeta; every replica holds the same value
(`dgamma_spread`, `dbeta_spread`: the largest difference, 0 in every test).

Unequal shards and an empty shard (Flax only, which has `mask`): every shard is padded with zero rows to the
largest and the padding masked out; equal shards run without a mask, as a user would call the layer.
Programs are cached per (library, world size, dtype, axis, affine, tracked, backward, masked) and compiled once
per shape: a later call of the same shape reuses the compiled step, and a later process loads it from the on-disk
cache of compiled programs (adapters/jax_cache.py, as the single-process JAX adapters do).
"""

import functools
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from . import jax_cache
from .jax_common import JAX_DTYPES, wide, x64

AXIS = "replica"  # the mesh axis: one replica per device
BATCH = "batch"  # equinox's vmapped per-example axis
TRACES = {"count": 0}  # programs traced in this process (each trace is one compilation)


# ---------------------------------------------------------------- one replica's forward, per library


def _flax_state(step, c):
    return {"mean": jnp.zeros(c, JAX_DTYPES[wide(step["dtype"])]), "var": jnp.ones(c, JAX_DTYPES[wide(step["dtype"])])}


def linen_forward(step, x, mask, gamma, beta, state, eps, momentum):
    """flax.linen.BatchNorm(axis_name) in training mode; batch_stats after the call."""
    import flax.linen as nn

    layer = nn.BatchNorm(
        use_running_average=False, axis=step["axis"], momentum=momentum, epsilon=eps, dtype=x.dtype,
        param_dtype=JAX_DTYPES[wide(step["dtype"])], use_bias=step["affine"], use_scale=step["affine"],
        axis_name=AXIS,
    )
    variables = {"batch_stats": state}
    if step["affine"]:
        variables["params"] = {"scale": gamma, "bias": beta}
    y, updated = layer.apply(variables, x, mask=mask, mutable=["batch_stats"])
    stats = updated["batch_stats"]
    return y, {"running_mean": stats["mean"], "running_var": stats["var"]}


def nnx_forward(step, x, mask, gamma, beta, state, eps, momentum):
    """flax.nnx.BatchNorm(axis_name) after model.train(); its BatchStat variables after the call."""
    from flax import nnx

    layer = nnx.BatchNorm(
        x.shape[step["axis"]], axis=step["axis"], momentum=momentum, epsilon=eps, dtype=x.dtype,
        param_dtype=JAX_DTYPES[wide(step["dtype"])], use_bias=step["affine"], use_scale=step["affine"],
        axis_name=AXIS, rngs=nnx.Rngs(0),
    )
    layer.mean.set_value(state["mean"]), layer.var.set_value(state["var"])
    if step["affine"]:
        layer.scale.set_value(gamma), layer.bias.set_value(beta)
    layer.train()
    y = layer(x, mask=mask)
    return y, {"running_mean": layer.mean[...], "running_var": layer.var[...]}


_HK_MODULE = "batch_norm"
_HK_EMAS = {"mean": f"{_HK_MODULE}/~/mean_ema", "var": f"{_HK_MODULE}/~/var_ema"}


def _hk_shape(step, ndim, c):
    return tuple(c if i == step["axis"] else 1 for i in range(ndim))


def haiku_state(step, shape, c, running_mean, running_var, batches_seen):
    """Each EMA's {counter, average}; hidden = average * (1 - d**counter) is formed in the forward."""
    dtype = JAX_DTYPES[step["dtype"]]
    stat_shape = _hk_shape(step, len(shape), c)
    values = {"mean": running_mean, "var": running_var}
    if running_mean is None:
        values = {"mean": np.zeros(c), "var": np.ones(c)}
    return {ema: {"counter": jnp.asarray(batches_seen, jnp.int32),
                  "average": jnp.asarray(values[k], dtype).reshape(stat_shape)} for k, ema in _HK_EMAS.items()}


def haiku_forward(step, x, mask, gamma, beta, state, eps, momentum):
    """hk.BatchNorm(cross_replica_axis) with is_training=True; the EMAs' averages after the call."""
    import haiku as hk

    data_format = "channels_last" if step["axis"] == x.ndim - 1 else "channels_first"

    def layer(x):
        bn = hk.BatchNorm(step["affine"], step["affine"], decay_rate=momentum, eps=eps, data_format=data_format,
                          cross_replica_axis=AXIS)
        return bn(x, is_training=True)

    shape = _hk_shape(step, x.ndim, x.shape[step["axis"]])
    params = {_HK_MODULE: {"scale": gamma.reshape(shape), "offset": beta.reshape(shape)}} if step["affine"] else {}
    decay = jnp.asarray(momentum, x.dtype)
    one = jnp.ones([], x.dtype)
    hk_state = {ema: {**s, "hidden": s["average"] * (one - jnp.power(decay, s["counter"]))} for ema, s in state.items()}
    y, new_state = hk.transform_with_state(layer).apply(params, hk_state, None, x)
    mean, var = (new_state[_HK_EMAS[k]] for k in ("mean", "var"))
    return y, {"running_mean": mean["average"].reshape(-1), "running_var": var["average"].reshape(-1)}


def _eqx_debias(counter, momentum):
    return jnp.where(counter == 0, 1, 1 - momentum**counter)


def _eqx_with(layer_state, values: dict):
    """`layer_state` with leaves replaced (by the id of the old leaf). State.set would refuse them: a value that
    entered shard_map carries the mesh's sharding in its abstract value, the layer's own constants do not, and
    State.set compares the two `eval_shape` structs, shardings included."""
    leaves, tree = jax.tree_util.tree_flatten(layer_state)
    assert len(values) == sum(id(leaf) in values for leaf in leaves), "state leaves not found"
    return jax.tree_util.tree_unflatten(tree, [values.get(id(leaf), leaf) for leaf in leaves])


def equinox_forward(step, x, mask, gamma, beta, state, eps, momentum):
    """eqx.nn.BatchNorm(axis_name=(batch, replica), mode="batch") vmapped over the shard's rows; the running
    statistics decoded from its hidden averages (hidden / (1 - momentum**t)), as the single-device adapter."""
    import equinox as eqx

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="A JAX array is being set as static")
        layer, layer_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(
            x.shape[1], (BATCH, AXIS), eps=eps, channelwise_affine=step["affine"], momentum=momentum,
            inference=False, dtype=JAX_DTYPES[step["dtype"]], mode="batch",
        )
    if step["affine"]:
        layer = eqx.tree_at(lambda m: (m.weight, m.bias), layer, (gamma, beta))
    counter = state["counter"]
    scale = _eqx_debias(counter, momentum)
    layer_state = _eqx_with(layer_state, {id(layer_state.get(layer.batch_counter)): counter,
                                          **dict(zip(map(id, layer_state.get(layer.batch_state_index)),
                                                     (state["mean"] * scale, state["var"] * scale)))})
    y, layer_state = jax.vmap(layer, axis_name=BATCH, in_axes=(0, None), out_axes=(0, None))(x, layer_state)
    counter = layer_state.get(layer.batch_counter)
    hidden_mean, hidden_var = layer_state.get(layer.batch_state_index)
    scale = _eqx_debias(counter, momentum)
    return y, {"running_mean": hidden_mean / scale, "running_var": hidden_var / scale}


FORWARDS = {"linen": linen_forward, "nnx": nnx_forward, "haiku": haiku_forward, "equinox": equinox_forward}
MASKABLE = ("linen", "nnx")
UNCHECKED = ("equinox",)


def initial_state(step, shape, payload):
    """The library's state for the request's running statistics (the layer's own initial state when untracked)."""
    c = shape[step["axis"]]
    rm, rv, seen = payload.get("running_mean"), payload.get("running_var"), int(payload.get("batches_seen", 0))
    lib = step["library"]
    if lib in ("linen", "nnx"):
        if rm is None:
            return _flax_state(step, c)
        dtype = JAX_DTYPES[wide(step["dtype"])]
        return {"mean": jnp.asarray(rm, dtype), "var": jnp.asarray(rv, dtype)}
    if lib == "haiku":
        return haiku_state(step, shape, c, rm, rv, seen)
    dtype = JAX_DTYPES[step["dtype"]]
    if rm is None:
        return {"counter": 0, "mean": jnp.zeros(c, dtype), "var": jnp.ones(c, dtype)}
    # a Python int: weakly typed once traced, like the layer's own jnp.array(0) (State.set checks the type)
    return {"counter": seen, "mean": jnp.asarray(rm, dtype), "var": jnp.asarray(rv, dtype)}


# ---------------------------------------------------------------- the sharded, jitted step


@functools.lru_cache(maxsize=None)
def mesh(world_size: int) -> Mesh:
    return Mesh(np.array(jax.devices("cpu")[:world_size]), (AXIS,))


@functools.lru_cache(maxsize=256)
def program(key):
    """One jitted step for `key` = (library, W, dtype, axis, affine, tracked, backward, masked): shard_map of the
    per-replica forward (and its vjp), per-replica outputs stacked along axis 0."""
    library, world, dtype, axis, affine, tracked, backward, masked = key
    step = {"library": library, "dtype": dtype, "axis": axis, "affine": affine}
    forward = FORWARDS[library]

    def replica(x, mask, gamma, beta, state, eps, momentum, dy):
        TRACES["count"] += 1
        x, dy = x[0], None if dy is None else dy[0]  # this replica's block: (1, rows, ...) -> (rows, ...)
        mask = None if mask is None else mask[0]

        def run(x, gamma, beta):
            return forward(step, x, mask, gamma, beta, state, eps, momentum)

        out = {}
        if backward:
            y, pullback, running = jax.vjp(run, x, gamma, beta, has_aux=True)
            dx, dgamma, dbeta = pullback(dy.astype(y.dtype))
            if library in UNCHECKED:  # no implicit pvary, so no implicit psum: this replica's own gradient
                dgamma, dbeta = jax.lax.psum((dgamma, dbeta), AXIS)
            out.update(dx=dx[None])
            if affine:
                out.update(dgamma=dgamma[None], dbeta=dbeta[None])
        else:
            y, running = run(x, gamma, beta)
        out["y"] = y[None]
        if tracked:
            out.update({k: v[None] for k, v in running.items()})
        return out

    in_specs = (P(AXIS), P(AXIS) if masked else None, P(), P(), P(), P(), P(), P(AXIS) if backward else None)
    sharded = jax.shard_map(replica, mesh=mesh(world), in_specs=in_specs, out_specs=P(AXIS),
                            check_vma=library not in UNCHECKED)
    return jax.jit(sharded)


PACKAGES = {"linen": ("flax",), "nnx": ("flax",), "haiku": ("haiku",), "equinox": ("equinox",)}


def cached_program(key) -> jax_cache.Program:
    """`program(key)`'s identity in the on-disk cache of compiled programs (adapters/jax_cache.py): the key, the
    library it calls, and this file and jax_common's, which write it (the mesh's size is in the key and in
    XLA_FLAGS, part of every entry's fingerprint)."""
    from . import jax_common

    return jax_cache.Program(("replica step", *key), PACKAGES[key[0]], (__file__, jax_common.__file__))


def _padded(shards, rows: int, dtype):
    """(W, rows, ...) with each shard's rows first and zeros after."""
    out = np.zeros((len(shards), rows, *np.shape(shards[0])[1:]), dtype=np.float64)
    for r, s in enumerate(shards):
        out[r, : len(s)] = s
    return jnp.asarray(out, dtype)


def step(payload: dict) -> dict:
    """One training step over W = len(payload["shards"]) replicas; per-replica outputs as float64 arrays."""
    shards = [np.asarray(s, np.float64) for s in payload["shards"]]
    world, dtype = len(shards), payload["dtype"]
    ndim = shards[0].ndim
    axis = payload["axis"] % ndim
    rows = [len(s) for s in shards]
    most = max(rows)
    library = payload["library"]
    masked = len(set(rows)) > 1 and library in MASKABLE
    backward = payload.get("dys") is not None
    affine = payload.get("gamma") is not None
    tracked = payload.get("running_mean") is not None
    key = (library, world, dtype, axis, affine, tracked, backward, masked)
    with x64(dtype):
        data = JAX_DTYPES[dtype]
        pdt = JAX_DTYPES[wide(dtype)] if library in MASKABLE else data  # haiku/equinox: parameters in x's dtype
        static = {"library": library, "dtype": dtype, "axis": axis, "affine": affine}
        shape = (most, *shards[0].shape[1:])
        state = initial_state(static, shape, payload)
        c = shape[axis]
        args = (
            _padded(shards, most, data),
            jnp.asarray(np.arange(most)[None, :] < np.array(rows)[:, None]).reshape(world, most, *[1] * (ndim - 1))
            if masked else None,
            jnp.asarray(payload["gamma"], pdt) if affine else jnp.ones(c, pdt),
            jnp.asarray(payload["beta"], pdt) if affine else jnp.zeros(c, pdt),
            state,
            float(payload["eps"]), float(payload.get("momentum") or 0.0),
            _padded(payload["dys"], most, data) if backward else None,
        )
        before, traced = dict(jax_cache.COUNTS), TRACES["count"]
        started = time.perf_counter()
        cpu = mesh(world).devices.flat
        out = jax.device_get(jax_cache.call(program(key), args, cached_program(key), cpu[0], devices=list(cpu)))
        seconds = time.perf_counter() - started
    result = {k: np.asarray(v).astype(np.float64) for k, v in out.items()}
    for k in ("y", "dx"):
        if k in result:
            result[k] = [result[k][r, :n] for r, n in enumerate(rows)]
    for k in ("dgamma", "dbeta"):
        if k in result:  # every replica holds the psum'd gradient; replica 0's is returned, the spread reported
            result[f"{k}_spread"] = float(np.max(np.abs(result[k] - result[k][0]))) if world else 0.0
            result[k] = result[k][0]
    # "compiled": a program new to this process (compiled, or loaded from the on-disk cache: "loaded")
    loaded = jax_cache.COUNTS["loaded"] > before["loaded"]
    new = loaded or jax_cache.COUNTS["compiled"] > before["compiled"] or TRACES["count"] > traced
    result["_info"] = {"compiled": new, "loaded": loaded, "seconds": seconds, "key": key}
    return result


def handle(payload: dict):
    """A step, or (for tests) a fault: {"fault": "hang", "seconds": s} sleeps, {"fault": "exit", "code": c} dies."""
    fault = payload.get("fault")
    if fault == "hang":
        time.sleep(float(payload.get("seconds", 3600)))
        return None
    if fault == "exit":
        os._exit(int(payload.get("code", 1)))
    if fault == "devices":
        return [str(d) for d in jax.devices("cpu")]
    return step(payload)


def serve(rank: int, processes: int):
    """The ReplicaGroup entry: one process serves every JAX replica backend."""
    return handle
