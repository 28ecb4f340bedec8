"""What the distributed part of a run produces: one `ReplicaCell` per (backend, world size, split, dtype),
with one `ReplicaRow` per quantity. Plain data, saved in the report's JSON under "replicas" and read back
by reports/load.py; conformance/replica_battery.py fills them, the reports render them."""

from dataclasses import dataclass, field


@dataclass
class ReplicaRow:
    """One quantity of one cell, over the cell's examples (the worst example's figures)."""

    quantity: str  # y, running_mean, running_var, dx, dgamma, dbeta
    verdict: str  # a spec.Verdict value, or "known discrepancy" (see `known`)
    max_ratio: float | None = None  # worst |error| / bound
    observed: float | None = None  # at the worst element
    expected: float | None = None
    bound: float | None = None
    worst: str = ""  # where: "replica 1, (0, 2)" or "channel 2"
    mistake: str = ""  # the named mistake (diagnosis), "" when none applies
    detail: str = ""  # one line: what was seen, or why it is ill-conditioned
    known: str = ""  # the id of the known discrepancy that covers it, "" when none
    judged: int = 0  # examples with a bound for this quantity
    examples: int = 0  # examples drawn

    @property
    def accepted(self) -> bool:
        return self.verdict in ("conforms", "ill-conditioned", "known discrepancy")


@dataclass
class ReplicaCell:
    """One backend at one world size and split pattern, in one dtype."""

    backend: str
    world_size: int
    split: str  # the split pattern's name, e.g. "equal", "unequal", "empty shard"
    rows_per_replica: list[int]  # the shard sizes (batch rows per replica)
    dtype: str
    device: str = "cpu"
    status: str = "ran"  # ran, unsupported, skipped, crashed, timed out, error
    reason: str = ""  # why unsupported/skipped, or what crashed/raised
    seconds: float = 0.0
    rows: list[ReplicaRow] = field(default_factory=list)
    replay: str = ""  # the command that replays the first failing example ("" when none)
    semantics: str = ""  # synchronized / per-replica (from the backend's record)
    # known discrepancy id -> [examples it covered, examples that needed it (the declared semantics failed there)]
    discrepancies: dict[str, list[int]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Crashed, timed out or raised: the cell could not be judged."""
        return self.status in ("crashed", "timed out", "error")

    @property
    def conforms(self) -> bool:
        return not self.failed and all(r.accepted for r in self.rows)
