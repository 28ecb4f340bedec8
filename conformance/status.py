"""The words a run's results are stated in: cell statuses and quantity-row verdicts, as enums.

Both are `str` enums, so that a result read back from a worker's JSON or a saved report compares equal to
its member and the JSON layout (`bnconf-report/1`) keeps the same strings.
"""

from enum import Enum


class CellStatus(str, Enum):
    """What became of one (backend, device, dtype, mode) cell."""

    RAN = "ran"
    UNSUPPORTED = "unsupported"  # the backend does not offer it, or the device is absent: not a failure
    ERROR = "error"  # the backend raised, or returned something bnconf cannot judge
    CRASHED = "crashed"
    TIMED_OUT = "timed out"
    OUT_OF_MEMORY = "out of memory"
    NOT_RUN = "not run"

    def __str__(self) -> str:
        return self.value

    @property
    def failed(self) -> bool:
        """The cell's backend did not finish it: its worker crashed, hung or ran out of memory."""
        return self in WORKER_FAILURES

    @property
    def acceptable(self) -> bool:
        """Nothing in the cell itself stops the run from conforming."""
        return self in (CellStatus.RAN, CellStatus.UNSUPPORTED)


WORKER_FAILURES = frozenset({CellStatus.CRASHED, CellStatus.TIMED_OUT, CellStatus.OUT_OF_MEMORY, CellStatus.NOT_RUN})


class RowVerdict(str, Enum):
    """One quantity's verdict over a cell's cases (the worst case decides)."""

    CONFORMS = "conforms"
    KNOWN = "known discrepancy"
    ILL_CONDITIONED = "ill-conditioned"
    NON_CONFORMANT = "NON-CONFORMANT"

    def __str__(self) -> str:
        return self.value

    @property
    def accepted(self) -> bool:
        return self is not RowVerdict.NON_CONFORMANT
