"""The JAX family's backends: flax.linen and flax.nnx (fast and stable variance), haiku and equinox batch
norm. The shared machinery (x64 scoping, devices, the jit cache, jax.vjp gradients) is in jax_common.py."""

from . import jax_equinox, jax_flax, jax_haiku

BACKENDS = [*jax_flax.BACKENDS, *jax_haiku.BACKENDS, *jax_equinox.BACKENDS]
