"""The replica worker of the Keras backends: synchronized batch norm under tf.distribute.MirroredStrategy.

Runs inside a `ReplicaGroup` process (one process; the replicas are the strategy's devices), started with
KERAS_BACKEND=tensorflow. `serve` splits the one physical CPU into `LOGICAL_DEVICES` logical CPU devices
before TensorFlow initializes its runtime, so that W <= 4 replicas each get a device of their own.

One step of W replicas (`Worker.handle`), for Keras 3 `keras.layers.BatchNormalization(synchronized=True)`
(kind "keras") or tf_keras's `BatchNormalization(synchronized=True)` (kind "tf_keras"):

    assign gamma, beta, moving statistics (cross-replica context: every replica's copy)
    strategy.run(replica_fn) with shard r on replica r (unequal and empty shards: per-replica values of
    different batch lengths, `experimental_distribute_values_from_function`), where replica_fn is
        y_r = layer(x_r, training=True)            all-reduced sum(x), sum(x**2), count; moving update
        dx_r, dgamma_r, dbeta_r = d sum(y_r * dy_r) / d(x_r, gamma, beta)   (tf.GradientTape)
        the replica's own copy of moving_mean / moving_variance after the update
    dgamma = sum_r dgamma_r, dbeta = sum_r dbeta_r   (strategy.reduce(SUM): what MirroredStrategy's
                                                      gradient all-reduce does before an optimizer step)

Gradients across replicas: the gradient of `ReplicaContext.all_reduce(SUM)` is the all-reduce of the upstream
gradients, so replica r's dx_r already holds every replica's loss's dependence on x_r (the synchronized dx,
the slice of the global dx). Its dgamma_r and dbeta_r do not: they are replica r's own terms,
sum over its rows of dy * xhat and of dy, and only their sum over replicas is the global gradient (measured:
the per-replica values equal the local sums). The step returns that sum, computed by the framework.

Everything is traced once per signature (kind, W, rank, channel axis, channel count, dtype, affine) into a
tf.function whose inputs leave every dimension but the channel's unknown, so that unequal and new shard
shapes, parameters, momentum and eps reuse it (a forward-only request runs the same step with dy = 0):
momentum and eps are function arguments, handed to the layer at trace time as objects that reproduce
exactly the roundings a Python-float attribute gets. A TensorFlow error inside the step ends the process
(`os._exit`): an aborted collective leaves the runtime unusable ("Restart your program to reset"), and the
group reports the death as ReplicaCrash and starts a fresh process for the next call.
"""

import os
import sys
from collections import OrderedDict

import numpy as np

LOGICAL_DEVICES = 4  # the largest world size
CACHE_SIZE = 32  # compiled steps (each with its layer) kept per process
COLLECTIVE_KEY_RANGE = 1000  # collective group keys reserved per world size
EXIT_TF_ERROR = 70  # the process's exit status after a TensorFlow error in a step
KINDS = ("keras", "tf_keras")


def serve(rank: int, processes: int):
    """ReplicaGroup entry: configure TensorFlow's devices, return the handler."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * LOGICAL_DEVICES)
    tf.get_logger().setLevel("ERROR")
    return Worker().handle


class _Cast:
    """A float64 scalar tensor that multiplies as the Python float it stands for: rounded once to the other
    operand's dtype (what `tensor * python_float` does)."""

    def __init__(self, value):
        self.value = value

    def __rmul__(self, other):
        import tensorflow as tf

        return other * tf.cast(self.value, other.dtype)

    __mul__ = __rmul__


class _Momentum(_Cast):
    """The layer's momentum as a traced value. Keras 3: `moving * momentum + batch * (1.0 - momentum)`, with
    1 - momentum formed in double precision and rounded once to the compute dtype. tf_keras
    (_assign_moving_average): `decay = tf.convert_to_tensor(1.0 - momentum)`, a float32 tensor, cast to the
    variable's dtype. `one_minus` is 1 - momentum computed in double precision by the caller."""

    def __init__(self, momentum, one_minus, kind: str):
        super().__init__(momentum)
        self.one_minus, self.kind = one_minus, kind

    def __rsub__(self, other):
        import tensorflow as tf

        if other != 1.0:
            raise ValueError(f"the layer computed {other!r} - momentum; only 1.0 - momentum is traced")
        return tf.cast(self.one_minus, tf.float32) if self.kind == "tf_keras" else _Cast(self.one_minus)


def _is_tensorflow_error(e: Exception) -> bool:
    import tensorflow as tf

    return isinstance(e, tf.errors.OpError)


def _layer_class(kind: str):
    if kind == "keras":
        import keras

        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(f"keras runs the {keras.backend.backend()!r} backend here: synchronized=True needs "
                               "KERAS_BACKEND=tensorflow before keras is imported")
        return keras.layers.BatchNormalization
    import tf_keras

    return tf_keras.layers.BatchNormalization


def _variable(kind: str, v):
    """The distributed tf.Variable behind a layer weight (Keras 3 wraps it in a KerasVariable)."""
    return v.value if kind == "keras" else v


class _Step:
    """One signature's strategy, layer and traced step."""

    def __init__(self, worker: "Worker", kind, world, rank, axis, channels, dtype, affine):
        import tensorflow as tf

        self.strategy = worker.strategy(world)
        shape = tuple(channels if i == axis else None for i in range(rank))  # only C is static
        with self.strategy.scope():
            self.layer = _layer_class(kind)(axis=axis, center=affine, scale=affine, dtype=dtype, synchronized=True)
            self.layer.build(shape)
        layer = self.layer
        names = (["gamma", "beta"] if affine else []) + ["moving_mean", "moving_variance"]
        self.variables = [_variable(kind, getattr(layer, n)) for n in names]
        self.state_dtypes = [v.dtype.as_numpy_dtype for v in self.variables]
        params = self.variables[:2] if affine else []
        moving = self.variables[-2:]
        compute = tf.float64 if dtype == "float64" else tf.float32
        strategy = self.strategy
        x_spec = tf.TensorSpec(shape, tf.as_dtype(dtype))
        signature = [
            [x_spec] * world,
            [x_spec] * world,
            [tf.TensorSpec(v.shape, v.dtype) for v in self.variables],
            *[tf.TensorSpec((), tf.float64)] * 3,
        ]

        def replica_fn(x, dy, momentum, one_minus, eps):
            saved = layer.momentum, layer.epsilon
            object.__setattr__(layer, "momentum", _Momentum(momentum, one_minus, kind))
            object.__setattr__(layer, "epsilon", tf.cast(eps, compute))
            try:
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = layer(x, training=True)
                grads = tape.gradient(y, [x, *params], output_gradients=dy)
            finally:
                object.__setattr__(layer, "momentum", saved[0])
                object.__setattr__(layer, "epsilon", saved[1])
            return [y, *grads, *(tf.identity(v) for v in moving)]  # this replica's copies, after its update

        def step(xs, dys, state, momentum, one_minus, eps):
            worker.traces += 1  # runs at trace time only
            for v, value in zip(self.variables, state):
                v.assign(value)
            x = strategy.experimental_distribute_values_from_function(lambda ctx: xs[ctx.replica_id_in_sync_group])
            dy = strategy.experimental_distribute_values_from_function(lambda ctx: dys[ctx.replica_id_in_sync_group])
            out = strategy.run(replica_fn, args=(x, dy, momentum, one_minus, eps))
            per_replica = [strategy.experimental_local_results(o) for o in out]
            summed = [strategy.reduce(tf.distribute.ReduceOp.SUM, o, axis=None) for o in out[2:2 + len(params)]]
            return per_replica, summed

        self.function = tf.function(step, input_signature=signature)


class Worker:
    """Strategies per world size and compiled steps per signature, created on first use and reused."""

    def __init__(self):
        self._strategies: dict = {}
        self._steps: OrderedDict = OrderedDict()
        self.traces = 0

    def strategy(self, world: int):
        import tensorflow as tf

        if world not in self._strategies:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            if world > len(devices):
                raise ValueError(f"{world} replicas need {world} logical CPU devices; this process has {len(devices)}")
            # every MirroredStrategy numbers its collective groups from 1 + _collective_key_base: two strategies
            # of different sizes in one process would both call their group 1 and abort each other's all-reduce
            # ("joining a group with size 4, but that group has size 2"), so each world size gets its own range
            strategy_class = type(f"MirroredStrategy{world}", (tf.distribute.MirroredStrategy,),
                                  {"_collective_key_base": COLLECTIVE_KEY_RANGE * world})
            self._strategies[world] = strategy_class(devices[:world])
        return self._strategies[world]

    def _step(self, key) -> _Step:
        step = self._steps.pop(key, None) or _Step(self, *key)
        self._steps[key] = step
        while len(self._steps) > CACHE_SIZE:
            self._steps.popitem(last=False)
        return step

    def handle(self, p: dict) -> dict:
        """One step; `p` holds kind, dtype, axis, eps, momentum, shards, dys, gamma, beta, running_mean,
        running_var (float64 arrays; None where absent). Returns per-replica lists of y, dx, running_mean,
        running_var, the summed dgamma/dbeta (float64 arrays), and the number of traces so far."""
        if p["kind"] not in KINDS:
            raise ValueError(f"unknown kind {p['kind']!r}; known: {', '.join(KINDS)}")
        shards = [np.asarray(s, dtype=np.float64) for s in p["shards"]]
        ndim = shards[0].ndim
        axis = p["axis"] % ndim
        c = shards[0].shape[axis]
        affine, backward = p["gamma"] is not None, p["dys"] is not None
        step = self._step((p["kind"], len(shards), ndim, axis, c, p["dtype"], affine))
        state = ([p["gamma"], p["beta"]] if affine else []) + [
            np.zeros(c) if p["running_mean"] is None else p["running_mean"],
            np.ones(c) if p["running_var"] is None else p["running_var"],
        ]
        state = [np.asarray(v, dtype=np.float64).astype(d) for v, d in zip(state, step.state_dtypes)]
        xs = [s.astype(p["dtype"]) for s in shards]  # NumPy rounds float64 -> dtype once, correctly
        # forward only: the same traced step with dy = 0 (its gradients are dropped; the forward is the same)
        dys = [np.asarray(d, dtype=np.float64).astype(p["dtype"]) for d in p["dys"]] if backward else [
            np.zeros_like(x) for x in xs]
        momentum = float(p["momentum"])
        try:
            per_replica, summed = step.function(xs, dys, state, np.float64(momentum), np.float64(1.0 - momentum),
                                                np.float64(p["eps"]))
        except Exception as e:  # noqa: BLE001 - tf.errors.OpError, without importing TensorFlow here
            if not _is_tensorflow_error(e):
                raise
            sys.stderr.write(f"keras replica worker: {type(e).__name__} in the distributed step; exiting, the "
                             f"collective runtime may be aborted:\n{e}\n")
            sys.stderr.flush()
            os._exit(EXIT_TF_ERROR)
        arrays = [[np.asarray(t.numpy(), dtype=np.float64) for t in o] for o in per_replica]
        out = {"y": arrays[0], "running_mean": arrays[-2], "running_var": arrays[-1], "traces": self.traces}
        if backward:
            out["dx"] = arrays[1]
            if affine:
                out["dgamma"], out["dbeta"] = (np.asarray(t.numpy(), dtype=np.float64) for t in summed)
        return out
