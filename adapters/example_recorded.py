"""A backend with a documented deviation, recorded where bnconf checks it: the worked example of a record.

`LenientBatchNorm` is `example_numpy`'s backend without the momentum check, as PyTorch, TensorFlow, Keras and
Flax are: a momentum of 1.5 moves the running statistics past the batch statistic instead of being refused,
which the spec's edge case `momentum-outside-unit-interval` says it must be. The backend says so itself, in
its `edge_records`; bnconf then checks that it does exactly what the record says (a release that starts
refusing, or does something else, fails and the record shows as STALE), and the report shows the record's
explanation and evidence. A deviation in a value (not an edge case) is a `KnownDiscrepancy` in
`known_discrepancies` the same way. Remove the record and `bnconf validate` exits 1:

    bnconf validate adapters/example_recorded.py:BACKEND
"""

from bnconf.conformance.known.edge import ACCEPTS
from bnconf.conformance.records import EdgeRecord

from bnconf.adapters.example_numpy import NumpyBatchNorm

MOMENTUM_NOT_CHECKED = EdgeRecord(
    id="example-momentum-not-checked",
    backends="example.numpy[lenient]",
    case="momentum-outside-unit-interval",
    outcome=ACCEPTS,
    explanation="The running statistics are updated with the momentum as given: 1.5 moves them past the batch "
                "statistic (weight w = 1.5), as in PyTorch.",
    evidence="adapters/example_recorded.py LenientBatchNorm.run: no momentum check before the update. Observed: "
             "momentum 1.5 from running_mean 0 gives running_mean = 1.5 * batch mean.",
)


class LenientBatchNorm(NumpyBatchNorm):
    name = "example.numpy[lenient]"
    edge_records = (MOMENTUM_NOT_CHECKED,)

    def check_momentum(self, momentum):
        """The deviation: any momentum is used as given."""


BACKEND = LenientBatchNorm()
UNRECORDED = LenientBatchNorm()
UNRECORDED.edge_records = ()  # the same deviation without its record: not conformant
