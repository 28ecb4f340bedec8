"""TF1-style batch-norm layers in tf.compat.v1 graph mode (Graph + Session, `training` fed as a placeholder).

1. `tf.compat.v1.layers.batch_normalization` (tf_keras 2.21 legacy layer; TF 2.16+ routes the tf.compat.v1
   name there only under TF_USE_LEGACY_KERAS=1, read at the first attribute access of the lazy loader, so
   this module imports the very same function object from tf_keras instead and leaves `tf.keras` alone):
       train: y = gamma * (x - mean_B) / sqrt(var_B + eps) + beta;   eval: moving statistics instead
       moving <- moving - (moving - batch) * (1 - momentum)   (only when the UPDATE_OPS collection runs)
   fused=True (4-D/5-D, channel axis 1 or last, float32/16/bfloat16) runs FusedBatchNormV3, whose batch
   variance is Bessel-corrected; fused=False (and, silently, fused=True with float64) runs tf.nn.moments
   with the biased variance. Variants: update ops run with the train op (the documented pattern) or
   forgotten (the moving statistics never change).
2. The hand-written layer TF1 tutorials teach: tf.nn.moments over every axis but the last, shadow averages
   kept by tf.compat.v1.train.ExponentialMovingAverage(decay) over the batch mean/variance tensors, applied
   inside the training branch of tf.cond under tf.control_dependencies + tf.identity, inference normalizing
   with ema.average(...); tf.nn.batch_normalization in each branch. Variants: zero_debias off/on, and the
   frequent bug of a training branch that hard-codes eps=1e-5 while inference uses the layer's epsilon.

Each graph is built once per signature (rank and channel count: the other dimensions are left unknown; dtype,
channel axis, affine, device, and eps where it is an op attribute) and kept with its Session in a bounded LRU; the request's parameters and running statistics are
assigned to the variables, momentum/decay and eps fed through placeholders. Gradients are tf.gradients of
sum(y * dy) with dy fed in y's dtype. An eval forward runs the same training step (update ops included)
with `training` fed False, and every call that was given running statistics reads the variables back after
it: eval must leave them unchanged.
"""

import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..spec import Mode, precision_for
from ..spec.conventions import (
    TF_TUTORIAL_EMA_BATCHNORM,
    TF_TUTORIAL_EMA_ZERO_DEBIAS,
    TF_V1_LAYERS_FUSED,
    TF_V1_LAYERS_NONFUSED,
)
from . import tensorflow_common as tfc
from . import tf_graph_cache
from .protocol import Outputs, Request, check_request

tf = tfc.tf
# the object tf.compat.v1.layers.batch_normalization is under TF_USE_LEGACY_KERAS=1 (checked on tf_keras 2.21)
from tf_keras.src.legacy_tf_layers.normalization import batch_normalization as v1_batch_normalization  # noqa: E402

TRAINING = (Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD)
BACKWARD = (Mode.TRAIN_BACKWARD, Mode.EVAL_BACKWARD)
GRAPH_CACHE_SIZE = 32  # graphs (each with a Session) kept per backend
TUTORIAL_TRAIN_EPS = 1e-5  # what the buggy training branch hard-codes
V1_API = "tf.compat.v1.layers.batch_normalization"
TUTORIAL_API = "tf.nn.batch_normalization+ExponentialMovingAverage[tutorial layer]"


# ---------------------------------------------------------------- the momentum a Python float becomes


def float32(v: float) -> float:
    return float(np.float32(v))


def python_float_decay_momentum(momentum: float) -> float:
    """The value to feed a float64 momentum placeholder so that the non-fused layer's `1.0 - momentum` gives
    the decay a Python-float momentum gives: `tf.convert_to_tensor(1.0 - momentum)` is a float32 tensor
    (cast to the variable's dtype afterwards), so the weight on the new batch is float32(1 - momentum)."""
    return 1.0 - float32(1.0 - momentum)


def fused_path_momentum(momentum: float) -> float:
    """The fused path turns a Python-float momentum into a float32 constant (smart_cond on `training`)
    before `1.0 - momentum`: feeding float32(momentum) to a float32 placeholder reproduces that."""
    return float32(momentum)


# ---------------------------------------------------------------- built graphs


@dataclass
class BuiltGraph:
    """One signature's graph and Session, with the handles `run` feeds and fetches."""

    session: object
    x: object
    training: object
    momentum: object
    eps: object | None  # None where eps is an op attribute baked into the graph
    dy: object
    y: object
    train_step: object  # what a training step runs: y with the update ops, or y alone (updates forgotten)
    gradients: tuple  # (dx, dgamma, dbeta) of sum(y * dy); None where there is no parameter
    assign: dict = field(default_factory=dict)  # state name -> (placeholder, assign op)
    running: tuple = ()  # (moving mean, moving variance) variables as read after a step
    fused: bool = False  # FusedBatchNormV3 in the graph

    def handles(self) -> dict:
        """The graph's handles by name (tensors and ops: their graph names; variables: their op names), what
        `imported` finds them by in a copy of the graph (adapters/tf_graph_cache.py)."""
        name = lambda t: None if t is None else t.name  # noqa: E731
        return dict(x=name(self.x), training=name(self.training), momentum=name(self.momentum), eps=name(self.eps),
                    dy=name(self.dy), y=name(self.y), train_step=name(self.train_step),
                    gradients=[name(t) for t in self.gradients],
                    assign={k: [ph.name, getattr(op, "op", op).name] for k, (ph, op) in self.assign.items()},
                    running=[v.op.name for v in self.running], fused=self.fused)

    @classmethod
    def imported(cls, graph, handles: dict) -> "BuiltGraph":
        """The BuiltGraph of `graph`, an imported copy of a built one, from its `handles`, with a new Session."""
        get = lambda n: None if n is None else graph.as_graph_element(n)  # noqa: E731
        with graph.as_default():
            variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
            init = tf.compat.v1.global_variables_initializer()
        h = handles
        return cls(session=_session(graph, init), x=get(h["x"]), training=get(h["training"]),
                   momentum=get(h["momentum"]), eps=get(h["eps"]), dy=get(h["dy"]), y=get(h["y"]),
                   train_step=get(h["train_step"]), gradients=tuple(get(n) for n in h["gradients"]),
                   assign={k: (get(ph), graph.get_operation_by_name(op)) for k, (ph, op) in h["assign"].items()},
                   running=tuple(variables[n] for n in h["running"]), fused=h["fused"])


def _assigner(var):
    """A placeholder and the op that assigns it to `var`."""
    ph = tf.compat.v1.placeholder(var.dtype.base_dtype, var.shape)
    return ph, tf.compat.v1.assign(var, ph)


def _graph_ops(graph) -> set[str]:
    """Op types of the graph and of its function library (tf.cond bodies live there)."""
    gd = graph.as_graph_def()
    return {n.op for n in gd.node} | {n.op for f in gd.library.function for n in f.node_def}


def _gradients(y, x, gamma, beta, dy):
    xs = [t for t in (x, gamma, beta) if t is not None]
    grads = iter(tf.gradients(y, xs, grad_ys=dy))
    dx = next(grads)
    return dx, None if gamma is None else next(grads), None if beta is None else next(grads)


SOURCES = (__file__, tfc.__file__)  # bnconf's files that build the graphs: part of every on-disk key


class GraphCache:
    """A bounded LRU of BuiltGraphs (evicted Sessions are closed) in front of the graphs saved on disk
    (adapters/tf_graph_cache.py): a signature met neither here nor there is built, then saved. `builds` counts the
    graphs made (built or imported), `imported` those of them imported from disk. `program` names the backend in
    the on-disk key (its class and name)."""

    def __init__(self, build, program: tuple = (), maxsize: int = GRAPH_CACHE_SIZE):
        self._build, self._maxsize, self._graphs, self.builds = build, maxsize, OrderedDict(), 0
        self.program, self.imported = program, 0

    def __call__(self, key) -> BuiltGraph:
        if key in self._graphs:
            self._graphs.move_to_end(key)
            return self._graphs[key]
        program = (*self.program, key)
        saved = tf_graph_cache.load(program, SOURCES) if self.program else None
        if saved is not None:
            built = BuiltGraph.imported(*saved)
            self.imported += 1
        else:
            built = self._build(*key)
            if self.program:
                tf_graph_cache.save(program, SOURCES, built.session.graph, built.handles())
        self.builds += 1
        self._graphs[key] = built
        if len(self._graphs) > self._maxsize:
            self._graphs.popitem(last=False)[1].session.close()
        return built


def _session(graph, init) -> object:
    session = tf.compat.v1.Session(graph=graph)
    session.run(init)
    return session


# ---------------------------------------------------------------- the shared run


class _GraphBackend:
    """Graph-mode backends: build (cached), assign state, feed, run; subclasses build and say what to assign."""

    modes = frozenset(Mode)
    devices = ("cpu", "gpu")
    channel_axes = (-1, 1)

    def __init__(self):
        self.graphs = GraphCache(self._build, (type(self).__name__, self.name))

    def versions(self) -> dict[str, str]:
        import tf_keras

        return {**tfc.versions(), "tf_keras": tf_keras.__version__}

    def unavailable(self, device: str) -> str | None:
        return tfc.gpu_unavailable(device)

    def run(self, mode: Mode, r: Request) -> Outputs:
        check_request(self, mode, r)
        rank = np.ndim(r.x)
        axis = r.axis % rank
        shape = tuple(n if i == axis else None for i, n in enumerate(np.shape(r.x)))  # only C is static
        key = (shape, r.dtype, axis, r.gamma is not None, r.device, self._eps_key(r))
        g = self.graphs(key)
        training = mode in TRAINING
        state = self._state(r, g)
        g.session.run([op for _, op in g.assign.values()], {g.assign[k][0]: v for k, v in state.items()})
        feed = {g.x: r.x, g.training: training, g.momentum: self._momentum_feed(r, g)}
        if g.eps is not None:
            feed[g.eps] = r.eps
        if mode in BACKWARD:
            feed[g.dy] = r.dy
            values = iter(g.session.run([t for t in g.gradients if t is not None], feed))
            dx, dgamma, dbeta = (None if t is None else next(values) for t in g.gradients)
            out = Outputs(dx=dx, dgamma=dgamma, dbeta=dbeta)
            if mode is Mode.EVAL_BACKWARD and r.running_mean is not None:
                out.running_mean, out.running_var = g.session.run(list(g.running))
            return out
        # eval runs the training step too, with `training` fed False: the update ops (the documented pattern
        # attaches them to the step) must then leave the moving statistics alone, read back below
        y = g.session.run(g.train_step, feed)
        out = Outputs(y=y)
        if r.running_mean is not None:
            out.running_mean, out.running_var = g.session.run(list(g.running))
        return out


# ---------------------------------------------------------------- 1. tf.compat.v1.layers.batch_normalization


class V1LayersBatchNormalization(_GraphBackend):
    """tf.compat.v1.layers.batch_normalization(x, axis, momentum, epsilon, center, scale, fused, training=ph)."""

    def __init__(self, fused: bool, forget_update_ops: bool = False):
        self.fused = fused
        self.forget_update_ops = forget_update_ops
        self.convention = TF_V1_LAYERS_FUSED if fused else TF_V1_LAYERS_NONFUSED
        tags = ["fused" if fused else "non-fused"] + (["update ops forgotten"] if forget_update_ops else [])
        self.name = f"{V1_API}[{', '.join(tags)}]"
        self.ranks = self.convention.ranks
        # fused=True with float64 silently runs the non-fused path (BatchNormalizationBase.build, V1 behaviour)
        self.dtypes = tuple(tfc.TF_DTYPES)
        super().__init__()

    def precision(self, dtype: str, device: str):
        # 16-bit inputs: both paths compute in float32 (casts / FusedBatchNormV3 U=float); CPU flushes subnormals
        return precision_for(dtype, **tfc.flush(device))

    def fused_path(self, rank: int, dtype: str) -> bool:
        """Whether the layer will run FusedBatchNormV3 (build(): rank 4/5 and a float32/16/bfloat16 compute dtype)."""
        return self.fused and rank in (4, 5) and dtype != "float64"

    def _eps_key(self, r: Request):
        # FusedBatchNormV3 takes epsilon as an attribute: one graph per eps there; fed elsewhere
        return r.eps if self.fused_path(np.ndim(r.x), r.dtype) else None

    def _momentum_feed(self, r: Request, g: BuiltGraph) -> float:
        m = 1.0 if r.momentum is None else r.momentum
        return fused_path_momentum(m) if g.fused else python_float_decay_momentum(m)

    def _build(self, shape, dtype, axis, affine, device, eps) -> BuiltGraph:
        fused_path = self.fused_path(len(shape), dtype)
        graph = tf.Graph()
        with graph.as_default(), tfc.device_scope(device):
            x = tf.compat.v1.placeholder(tfc.tf_dtype(dtype), shape, name="x")
            training = tf.compat.v1.placeholder(tf.bool, [], name="training")
            momentum = tf.compat.v1.placeholder(tf.float32 if fused_path else tf.float64, [], name="momentum")
            eps_ph = None if fused_path else tf.compat.v1.placeholder(tfc.tf_dtype(tfc.param_dtype(dtype)), [], name="eps")
            with warnings.catch_warnings():  # its deprecation notice, once per graph, would flood reports
                warnings.filterwarnings("ignore", message=".*tf.layers.batch_normalization. is deprecated")
                y = v1_batch_normalization(
                    x, axis=axis, momentum=momentum, epsilon=eps if fused_path else eps_ph,
                    center=affine, scale=affine, fused=self.fused, training=training,
                )
            update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
            if self.forget_update_ops:
                train_step = y
            else:
                with tf.control_dependencies(update_ops):
                    train_step = tf.identity(y)
            variables = {v.op.name.rsplit("/", 1)[-1]: v for v in tf.compat.v1.global_variables()}
            gamma, beta = variables.get("gamma"), variables.get("beta")
            dy = tf.compat.v1.placeholder(y.dtype, shape, name="dy")
            built = BuiltGraph(
                session=None, x=x, training=training, momentum=momentum, eps=eps_ph, dy=dy, y=y,
                train_step=train_step, gradients=_gradients(y, x, gamma, beta, dy),
                assign={name: _assigner(v) for name, v in variables.items()},
                running=(variables["moving_mean"], variables["moving_variance"]),
            )
            built.session = _session(graph, tf.compat.v1.global_variables_initializer())
        built.fused = "FusedBatchNormV3" in _graph_ops(graph)
        if built.fused != fused_path:
            raise RuntimeError(f"{self.name}: expected the {'fused' if fused_path else 'non-fused'} path for "
                               f"{dtype} rank {len(shape)}, the graph has {'' if built.fused else 'no '}FusedBatchNormV3")
        return built

    def _state(self, r: Request, g: BuiltGraph) -> dict:
        c = r.x.shape[r.axis]
        state = {"moving_mean": np.zeros(c), "moving_variance": np.ones(c)}
        if r.running_mean is not None:
            state = {"moving_mean": r.running_mean, "moving_variance": r.running_var}
        if r.gamma is not None:
            state.update(gamma=r.gamma, beta=r.beta)
        return state


# ---------------------------------------------------------------- 2. the tutorial layer


class TutorialEmaBatchNormalization(_GraphBackend):
    """The hand-written TF1 layer (see the module docstring); the channel axis is the last one."""

    channel_axes = (-1,)
    # float16 left out: the layer normalizes with tf.nn.batch_normalization, whose float16 overflows are
    # checked and recorded on the tf.nn backends (tf-nn-float16-*); here they would mask the layer's own bugs
    dtypes = tuple(d for d in tfc.TF_DTYPES if d != "float16")

    def __init__(self, zero_debias: bool = False, train_eps_bug: bool = False):
        self.zero_debias = zero_debias
        self.train_eps_bug = train_eps_bug
        self.convention = TF_TUTORIAL_EMA_BATCHNORM if not zero_debias else TF_TUTORIAL_EMA_ZERO_DEBIAS
        tags = (["zero_debias"] if zero_debias else []) + (["train eps hard-coded 1e-5"] if train_eps_bug else [])
        self.name = TUTORIAL_API + "".join(f"[{t}]" for t in tags)
        self.ranks = self.convention.ranks
        super().__init__()

    def precision(self, dtype: str, device: str):
        # as tf.nn.batch_normalization: moments rounded to the half format, y formed in it; sums in float32
        if dtype in tfc.HALF:
            return precision_for(dtype, compute=dtype, accumulate="float32", stats=dtype, **tfc.flush(device))
        return precision_for(dtype, **tfc.flush(device))

    def _eps_key(self, r: Request):
        return None

    def _momentum_feed(self, r: Request, g: BuiltGraph) -> float:
        return 1.0 if r.momentum is None else r.momentum  # decay: a float32 tensor, as a Python float becomes

    def _build(self, shape, dtype, axis, affine, device, _eps) -> BuiltGraph:
        graph = tf.Graph()
        tdt = tfc.tf_dtype(dtype)
        c = shape[axis]
        with graph.as_default(), tfc.device_scope(device):
            x = tf.compat.v1.placeholder(tdt, shape, name="x")
            training = tf.compat.v1.placeholder(tf.bool, [], name="training")
            decay = tf.compat.v1.placeholder(tf.float32, [], name="decay")
            eps = tf.compat.v1.placeholder(tdt, [], name="eps")
            gamma = tf.compat.v1.Variable(tf.ones([c], tdt), name="gamma") if affine else None
            beta = tf.compat.v1.Variable(tf.zeros([c], tdt), name="beta") if affine else None
            batch_mean, batch_var = tf.nn.moments(x, list(range(len(shape) - 1)))
            ema = tf.compat.v1.train.ExponentialMovingAverage(decay, zero_debias=self.zero_debias)
            train_eps = TUTORIAL_TRAIN_EPS if self.train_eps_bug else eps

            def train_branch():
                ema_apply_op = ema.apply([batch_mean, batch_var])
                with tf.control_dependencies([ema_apply_op]):
                    mean, var = tf.identity(batch_mean), tf.identity(batch_var)
                return tf.nn.batch_normalization(x, mean, var, beta, gamma, train_eps)

            def inference_branch():
                return tf.nn.batch_normalization(x, ema.average(batch_mean), ema.average(batch_var), beta, gamma, eps)

            y = tf.cond(training, train_branch, inference_branch)
            dy = tf.compat.v1.placeholder(y.dtype, shape, name="dy")
            shadows = (ema.average(batch_mean), ema.average(batch_var))
            variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
            assign = {"gamma": _assigner(gamma), "beta": _assigner(beta)} if affine else {}
            for stat, shadow in zip(("mean", "var"), shadows):
                assign[stat] = _assigner(shadow)
                if self.zero_debias:  # moving_averages._zero_debias keeps (biased, local_step) beside the shadow
                    assign[stat + "/biased"] = _assigner(variables[shadow.op.name + "/biased"])
                    assign[stat + "/local_step"] = _assigner(variables[shadow.op.name + "/local_step"])
            built = BuiltGraph(
                session=None, x=x, training=training, momentum=decay, eps=eps, dy=dy, y=y, train_step=y,
                gradients=_gradients(y, x, gamma, beta, dy), assign=assign, running=shadows,
            )
            built.session = _session(graph, tf.compat.v1.global_variables_initializer())
        return built

    def _state(self, r: Request, g: BuiltGraph) -> dict:
        c = r.x.shape[-1]
        # the shadows of tensors start at zero (slot_creator.create_zeros_slot), variance included
        mean = np.zeros(c) if r.running_mean is None else r.running_mean
        var = np.zeros(c) if r.running_var is None else r.running_var
        state = {"mean": mean, "var": var}
        if self.zero_debias:
            state.update(zero_debias_state("mean", mean, r), **zero_debias_state("var", var, r))
        if r.gamma is not None:
            state.update(gamma=r.gamma, beta=r.beta)
        return state


def zero_debias_state(stat: str, average: np.ndarray, r: Request) -> dict:
    """(biased, local_step) for a zero-debiased average equal to `average` after t = batches_seen steps:
    moving_averages._zero_debias keeps biased = average * (1 - d**t), d = 1 - float32(1 - float32(decay))
    the decay it uses; t = 0 is the fresh state (biased 0)."""
    t = 0 if r.running_mean is None else r.batches_seen
    d = 1.0 - float32(1.0 - float32(1.0 if r.momentum is None else r.momentum))
    return {stat + "/biased": np.asarray(average) * (1.0 - d**t), stat + "/local_step": float(t)}


BACKENDS = [
    V1LayersBatchNormalization(fused=True),
    V1LayersBatchNormalization(fused=False),
    V1LayersBatchNormalization(fused=True, forget_update_ops=True),
    TutorialEmaBatchNormalization(),
    TutorialEmaBatchNormalization(zero_debias=True),
    TutorialEmaBatchNormalization(train_eps_bug=True),
]
