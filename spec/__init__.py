"""bnconf.spec: the float64 reference semantics of batch normalization.

Pure NumPy. `oracle` computes what batch norm is; `conventions` records how each framework's API
chooses among the variants; `translate` maps parameters between APIs; `error_model` bounds how far a
correct float32/16 implementation may be from the oracle; `expect` and `verdict` compare and classify;
`diagnosis` names the known mistake that explains a failure.
The prose and the derivations are in SPEC.md beside this file.
"""

from .checks import InputError
from .conventions import CONVENTIONS, Convention, EpsPlacement, MomentumStyle, Variance, convention, variants
from .error_model import (
    NUMPY_PAIRWISE,
    PAIRWISE,
    RECURSIVE,
    Precision,
    Summation,
    VarianceAlgorithm,
    precision_for,
    probe_tolerance,
)
from .expect import Expected, Inputs, Mode, expected
from .formats import FORMATS, FloatFormat, float_format
from .oracle import (
    BatchStats,
    Gradients,
    RunningStats,
    TrainForward,
    backward_eval,
    backward_train,
    batch_stats,
    forward_eval,
    forward_train,
    inverse_std,
    update_running_stats,
    update_weight,
)
from .translate import Residual, ResidualKind, Translation, translate
from .verdict import Comparison, Verdict, compare, comparisons
from .diagnosis import HYPOTHESES, Diagnosis, Hypothesis, diagnose, judge

__all__ = [name for name in dir() if not name.startswith("_")]
