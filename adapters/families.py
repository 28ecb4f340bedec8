"""The built-in backend families, one declarative entry each: what the registry loads, what it was checked
against, which convention records it declares, and the facts the documentation tables show.

Data only: importing this module imports no framework (the adapters' backend objects stay in their
modules). `registry.BUILTIN` is derived from these entries, and `bnconf.reports.docs_tables` generates
SPEC.md §2.1 (the convention table) and README's adapters table from them, the convention records
(`spec/conventions.py`) and the known-discrepancy registries (`conformance/known/`);
`tests/test_docs_tables.py` keeps the documents in step and, where a framework is installed, checks each
entry against the backends its target really loads (names, conventions, dtypes, versions).

What an entry says once:
    name            the family's own name (`bnconf conventions`/docs), unique
    title           how the README names it
    registry        the key under which the registry loads it (`BUILTIN`; families that one target loads
                    share it: the tutorial layer lives in tensorflow_layers.py beside tf.compat.v1.layers)
    target          module:attribute holding the backends (None: a record bnconf checks its oracle against
                    without an adapter, such as ONNX)
    extra           the `pip install 'bnconf[extra]'` that installs its framework
    frameworks      (distribution, version) pairs the records and the adapters were checked against
    apis            the APIs it wraps, as README shows them (Markdown)
    backend_names   the exact names of its backends (how known discrepancies and edge records find it)
    conventions     the convention records its backends declare (names in spec.CONVENTIONS)
    dtypes          the union of its backends' dtypes
    known           the module in conformance/known/ holding its known discrepancies (None: none)
    found           what the battery found, one sentence or two (README; the records hold the details)
    rows            its rows of SPEC §2.1: the records it implements with two facts about the
                    implementation (batch-variance algorithm, half precision) that are not convention fields
"""

from dataclasses import dataclass

ALL_DTYPES = ("float64", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ConventionRow:
    """One row of SPEC.md §2.1: one API, the record(s) describing it (several when they differ only in the
    ranks they accept, e.g. BatchNorm1d/2d/3d), and what its implementation does where the convention is
    silent: how the batch variance is computed and in what format half-precision input is handled."""

    conventions: tuple[str, ...]  # names in spec.CONVENTIONS; the first one's fields fill the row
    variance_algorithm: str
    half_precision: str
    api: str | None = None  # the row's API text; None: the first record's `api`
    links: tuple[str, ...] = ()  # sources beyond the records' source_url (implementation files)


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    registry: str | None
    target: str | None
    extra: str | None
    frameworks: tuple[tuple[str, str], ...]
    apis: str
    backend_names: tuple[str, ...]
    conventions: tuple[str, ...]
    dtypes: tuple[str, ...]
    known: str | None
    found: str
    rows: tuple[ConventionRow, ...] = ()


TORCH = "https://github.com/pytorch/pytorch/blob/v2.13.0/"
TF = "https://github.com/tensorflow/tensorflow/blob/v2.21.0/"

FAMILIES: tuple[Family, ...] = (
    Family(
        name="torch",
        title="PyTorch",
        registry="torch",
        target="bnconf.adapters.torch_batchnorm:BACKENDS",
        extra="torch",
        frameworks=(("torch", "2.13.0"),),
        apis="`F.batch_norm`, `BatchNorm1d/2d/3d`, contiguous and `channels_last`, "
             "`BatchNorm2d[half parameters]` (`module.half()`)",
        backend_names=(
            "torch.nn.functional.batch_norm", "torch.nn.functional.batch_norm[channels_last]",
            "torch.nn.BatchNorm1d", "torch.nn.BatchNorm2d", "torch.nn.BatchNorm2d[channels_last]",
            "torch.nn.BatchNorm3d", "torch.nn.BatchNorm2d[half parameters]",
        ),
        conventions=("torch.nn.functional.batch_norm", "torch.nn.BatchNorm1d", "torch.nn.BatchNorm2d",
                     "torch.nn.BatchNorm3d"),
        dtypes=ALL_DTYPES,
        known="torch",
        found="CPU computes in half when no float32 tensor is involved (half input without affine/running "
              "stats, or half parameters)",
        rows=(
            ConventionRow(
                conventions=("torch.nn.BatchNorm1d", "torch.nn.BatchNorm2d", "torch.nn.BatchNorm3d"),
                api="torch.nn.BatchNorm1d/2d/3d",
                variance_algorithm="two-pass (CPU: double accumulator for contiguous float32)",
                half_precision="fp16/bf16 input, fp32 params: fp32 statistics",
                links=(TORCH + "aten/src/ATen/native/Normalization.cpp",),
            ),
            ConventionRow(
                conventions=("torch.nn.functional.batch_norm",),
                variance_algorithm="same kernel as the modules",
                half_precision="same as the modules",
            ),
        ),
    ),
    Family(
        name="tf.nn",
        title="TensorFlow functional ops",
        registry="tensorflow",
        target="bnconf.adapters.tensorflow_nn:BACKENDS",
        extra="tensorflow",
        frameworks=(("tensorflow-cpu", "2.21.0"),),
        apis="`tf.nn.moments` + `tf.nn.batch_normalization` eager and in `tf.function` (training only: no "
             "running statistics); `tf.compat.v1.nn.fused_batch_norm` NHWC and NCHW (4-D/5-D; no float64)",
        backend_names=(
            "tf.nn.batch_normalization[eager]", "tf.nn.batch_normalization[tf.function]",
            "tf.compat.v1.nn.fused_batch_norm[NHWC]", "tf.compat.v1.nn.fused_batch_norm[NCHW]",
        ),
        conventions=("tf.nn.batch_normalization", "tf.compat.v1.nn.fused_batch_norm"),
        dtypes=ALL_DTYPES,
        known="tensorflow",
        found="every CPU kernel flushes subnormals to zero (declared); the folded form "
              "`x*inv + (offset - mean*inv)` overflows float16, and its float16 gradient sums in float16 and "
              "overflows `inv**3`",
        rows=(
            ConventionRow(
                conventions=("tf.nn.batch_normalization",),
                variance_algorithm="two-pass",
                half_precision="fp16 upcast to fp32, **bf16 not**",
            ),
            ConventionRow(
                conventions=("tf.compat.v1.nn.fused_batch_norm",),
                variance_algorithm="two-pass (Eigen) / oneDNN (default on x86)",
                half_precision="fp32 statistics",
                links=(TF + "tensorflow/core/kernels/mkl/mkl_fused_batch_norm_op.cc",),
            ),
        ),
    ),
    Family(
        name="tf.compat.v1.layers",
        title="`tf.compat.v1.layers`",
        registry="tensorflow-layers",
        target="bnconf.adapters.tensorflow_layers:BACKENDS",
        extra="tensorflow",
        frameworks=(("tensorflow-cpu", "2.21.0"), ("tf_keras", "2.21.0")),
        apis="`batch_normalization` in graph mode with `training` a placeholder: `[fused]`, `[non-fused]`, "
             "`[fused, update ops forgotten]`",
        backend_names=(
            "tf.compat.v1.layers.batch_normalization[fused]",
            "tf.compat.v1.layers.batch_normalization[non-fused]",
            "tf.compat.v1.layers.batch_normalization[fused, update ops forgotten]",
        ),
        conventions=("tf.compat.v1.layers.batch_normalization[fused]",
                     "tf.compat.v1.layers.batch_normalization[non-fused]"),
        dtypes=ALL_DTYPES,
        known="tensorflow",
        found="forgetting `UPDATE_OPS` leaves the moving statistics untouched (its own row); `fused=True` "
              "silently falls back to the non-fused path (biased running variance) for float64; the decay is a "
              "float32 tensor even for float64 variables; in eval a NaN or Inf in x makes dx of its channel NaN",
        rows=(
            ConventionRow(
                conventions=("tf.compat.v1.layers.batch_normalization[fused]",),
                variance_algorithm="the fused op",
                half_precision="fp32 statistics",
            ),
            ConventionRow(
                conventions=("tf.compat.v1.layers.batch_normalization[non-fused]",),
                variance_algorithm="`tf.nn.moments`, two-pass",
                half_precision="cast to fp32",
            ),
        ),
    ),
    Family(
        name="tf1-tutorial",
        title="hand-written TF1 layer",
        registry="tensorflow-layers",
        target="bnconf.adapters.tensorflow_layers:BACKENDS",
        extra="tensorflow",
        frameworks=(("tensorflow-cpu", "2.21.0"),),
        apis="`tf.nn.moments` + `tf.train.ExponentialMovingAverage` under `control_dependencies` + `tf.cond` "
             "branches: plain, `[zero_debias]`, `[train eps hard-coded 1e-5]`",
        backend_names=(
            "tf.nn.batch_normalization+ExponentialMovingAverage[tutorial layer]",
            "tf.nn.batch_normalization+ExponentialMovingAverage[tutorial layer][zero_debias]",
            "tf.nn.batch_normalization+ExponentialMovingAverage[tutorial layer][train eps hard-coded 1e-5]",
        ),
        conventions=("tf1-tutorial batch norm (ExponentialMovingAverage)",
                     "tf1-tutorial batch norm (ExponentialMovingAverage, zero_debias=True)"),
        dtypes=("float64", "float32", "bfloat16"),
        known="tensorflow",
        found="the eps bug shows as a training-mode discrepancy while eval conforms; decay 1 with zero-debias "
              "divides by zero; float32 decay; in eval a NaN or Inf in x makes dx of its channel NaN",
        rows=(
            ConventionRow(
                conventions=("tf1-tutorial batch norm (ExponentialMovingAverage)",),
                api="hand-written TF1 layer: `tf.nn.moments`, `tf.compat.v1.train.ExponentialMovingAverage` "
                    "in `tf.cond`'s training branch, `tf.nn.batch_normalization`",
                variance_algorithm="`tf.nn.moments`, two-pass",
                half_precision="as `tf.nn` (float16 not run here: its overflows are recorded on the `tf.nn` "
                               "backends)",
            ),
            ConventionRow(
                conventions=("tf1-tutorial batch norm (ExponentialMovingAverage, zero_debias=True)",),
                api="the same with `ExponentialMovingAverage(decay, zero_debias=True)`",
                variance_algorithm="same",
                half_precision="same",
            ),
        ),
    ),
    Family(
        name="keras",
        title="Keras 3",
        registry="keras",
        target="bnconf.adapters.keras_batchnorm:BACKENDS",
        extra="keras",
        frameworks=(("keras", "3.15.1"),),
        apis="`keras.layers.BatchNormalization` on the tensorflow, jax and torch backends, plain and "
             "`mixed_float16`/`mixed_bfloat16` policies",
        backend_names=tuple(
            f"keras.layers.BatchNormalization[{b}" + (f", {p}]" if p else "]")
            for b in ("tensorflow", "jax", "torch") for p in (None, "mixed_float16", "mixed_bfloat16")
        ),
        conventions=("keras.layers.BatchNormalization",),
        dtypes=ALL_DTYPES,
        known="keras",
        found="jax and torch compute a float64 layer in float32; torch's one-pass variance (declared) goes "
              "negative and gives NaN at large |mean|/std",
        rows=(
            ConventionRow(
                conventions=("keras.layers.BatchNormalization",),
                variance_algorithm="jax, tensorflow: two-pass; **torch: one-pass `E[x²]−E[x]²`, unclamped**",
                half_precision="cast to fp32; fp32 moving statistics",
            ),
        ),
    ),
    Family(
        name="flax",
        title="Flax linen and NNX",
        registry="jax",
        target="bnconf.adapters.jax_batchnorm:BACKENDS",
        extra="jax",
        frameworks=(("jax", "0.10.2"), ("flax", "0.12.8")),
        apis="`flax.linen.BatchNorm` and `flax.nnx.BatchNorm`, each with the default fast variance and "
             "`[use_fast_variance=False]`",
        backend_names=(
            "flax.linen.BatchNorm", "flax.linen.BatchNorm[use_fast_variance=False]",
            "flax.nnx.BatchNorm", "flax.nnx.BatchNorm[use_fast_variance=False]",
        ),
        conventions=("flax.linen.BatchNorm", "flax.nnx.BatchNorm"),
        dtypes=ALL_DTYPES,
        known="jax",
        found="half-precision gradients: linen rounds its gradient paths to half, NNX sums its float16 "
              "gradients in half and overflows; the default fast variance is NaN where the squares overflow",
        rows=(
            ConventionRow(
                conventions=("flax.linen.BatchNorm",),
                variance_algorithm="default `use_fast_variance=True`: `max(0, E[x²]−E[x]²)`; two-pass if False",
                half_precision="promoted to ≥ fp32",
            ),
            ConventionRow(
                conventions=("flax.nnx.BatchNorm",),
                variance_algorithm="as linen",
                half_precision="≥ fp32",
            ),
        ),
    ),
    Family(
        name="haiku",
        title="Haiku",
        registry="jax",
        target="bnconf.adapters.jax_batchnorm:BACKENDS",
        extra="jax",
        frameworks=(("jax", "0.10.2"), ("dm-haiku", "0.0.17")),
        apis="`hk.BatchNorm` through `hk.transform_with_state`",
        backend_names=("haiku.BatchNorm",),
        conventions=("haiku.BatchNorm",),
        dtypes=ALL_DTYPES,
        known="jax",
        found="the unclamped one-pass variance goes negative (NaN) at large |mean|/std in every format; "
              "decay 1 with zero-debiasing divides by zero; float16 sums of squares overflow",
        rows=(
            ConventionRow(
                conventions=("haiku.BatchNorm",),
                variance_algorithm="one-pass, unclamped",
                half_precision="none: input dtype",
            ),
        ),
    ),
    Family(
        name="equinox",
        title="Equinox",
        registry="jax",
        target="bnconf.adapters.jax_batchnorm:BACKENDS",
        extra="jax",
        frameworks=(("jax", "0.10.2"), ("equinox", "0.13.8")),
        apis='`equinox.nn.BatchNorm(mode="batch")` vmapped over the batch',
        backend_names=("equinox.nn.BatchNorm",),
        conventions=("equinox.nn.BatchNorm",),
        dtypes=ALL_DTYPES,
        known="jax",
        found="the variance is debiased from its initial 1, not 0 (eval after one step uses var + m/(1 − m)); "
              "momentum 1 divides by zero; float16 sums overflow",
        rows=(
            ConventionRow(
                conventions=("equinox.nn.BatchNorm",),
                variance_algorithm="two-pass, clamped at 0",
                half_precision="none: input dtype (the adapter builds the layer in it)",
            ),
        ),
    ),
    Family(
        name="cuda-kernel",
        title="bnconf's own CUDA kernel",
        registry="cuda-kernel",
        target="bnconf.adapters.cuda_kernel:BACKENDS",
        extra="test",
        frameworks=(),
        apis="`adapters/cuda/batchnorm.cu`, NCHW and NHWC, on `cuda` (CuPy/NVRTC) and `cpu-emulated` (g++ with "
             "`cuda_on_cpu.h`)",
        backend_names=("bnconf.cuda_kernel[NCHW]", "bnconf.cuda_kernel[NHWC]"),
        conventions=("torch.nn.functional.batch_norm",),
        dtypes=("float32", "float16", "bfloat16"),
        known=None,
        found="conforms (no record)",
        rows=(
            ConventionRow(
                conventions=("torch.nn.functional.batch_norm",),
                api="bnconf's CUDA kernel (`adapters/cuda/batchnorm.cu`)",
                variance_algorithm="Welford per thread, Chan merges across threads and blocks",
                half_precision="fp16/bf16 input, fp32 parameters, statistics and accumulators",
            ),
        ),
    ),
)
"""The built-in families, in the order the documentation shows them."""

ONNX = Family(
    name="onnx",
    title="ONNX",
    registry=None,
    target=None,  # no adapter: tests/spec/test_oracle_onnx.py checks the oracle against onnx.reference
    extra=None,
    frameworks=(("onnx", "1.23.2"),),
    apis="",
    backend_names=(),
    conventions=("onnx.BatchNormalization-15",),
    dtypes=(),
    known=None,
    found="",
    rows=(
        ConventionRow(
            conventions=("onnx.BatchNormalization-15",),
            variance_algorithm="spec: ReduceVar; reference: `np.var`",
            half_precision="spec: float for fp16 (the reference evaluator computes in fp16)",
        ),
    ),
)
"""A record without a built-in adapter: §2.1 shows it, the registry and README's adapters table do not."""

RECORDED: tuple[Family, ...] = FAMILIES + (ONNX,)
"""Every entry whose records SPEC.md §2.1 shows."""


def builtin_targets() -> dict[str, tuple[str, str]]:
    """registry name -> (target, extra), in FAMILIES' order: what `registry.BUILTIN` holds. Families that one
    target loads share a registry name, and must then agree on target and extra."""
    out: dict[str, tuple[str, str]] = {}
    for f in FAMILIES:
        if f.target is None:
            continue
        entry = (f.target, f.extra)
        if out.setdefault(f.registry, entry) != entry:
            raise ValueError(f"family {f.name!r}: registry {f.registry!r} is {out[f.registry]}, not {entry}")
    return out


def family(name: str) -> Family:
    """The entry called `name`, with an error that lists the known names."""
    for f in RECORDED:
        if f.name == name:
            return f
    raise ValueError(f"unknown family {name!r}; known: {', '.join(f.name for f in RECORDED)}")


__all__ = ["ALL_DTYPES", "FAMILIES", "ONNX", "RECORDED", "ConventionRow", "Family", "builtin_targets", "family"]
