"""Putting a run's report on disk while it runs and when it ends: the partial JSON, then every format.

The JSON file is the report of record: it is rewritten as results arrive (`"status": "running"`), at once
when a write is cheap against the time since the last one, otherwise as soon as the run waits on a slow
case (the isolation loop's idle call), so that a killed run loses at most the results of one poll.
"""

import time

from . import figures, render

PARTIAL_WRITE_SHARE = 10  # after a result, rewrite at once unless that would take over a tenth of the time since


class Publisher:
    """Renders `state` (conformance.run.RunState) into `folder` (reports.output.ReportFolder)."""

    def __init__(self, folder, name: str, state, backends, environment: dict, seed: int, examples: int, verdict,
                 shard: str = ""):
        self.folder, self.name, self.state, self.backends = folder, name, state, backends
        self.shard = shard  # "K/N" for bnconf report --shard, else ""
        self.environment, self.seed, self.examples = environment, seed, examples
        self.verdict = verdict  # state -> list of reasons the run does not conform
        self.pictures: dict = {}
        self._written, self._last_end, self._took = None, 0.0, 0.0

    def report(self, status: str) -> render.Report:
        from ..conformance import battery
        from ..conformance.discrepancies import REGISTRY

        s = self.state
        return render.Report(list(s.results), self.environment, self.seed, self.examples, not self.verdict(s),
                             battery.discrepancy_use(s.results, REGISTRY), s.pairs, dict(self.pictures),
                             s.rows("inferred", self.backends), status, s.cells_planned, s.rows("edge", self.backends),
                             self.name, replica_cells=list(getattr(s, "replica_cells", [])),
                             replica_unavailable=[{"family": u.name, "reason": u.reason}
                                                  for u in getattr(s, "replica_unavailable", [])],
                             replica_pairs=list(getattr(s, "replica_pairs", [])), shard=self.shard,
                             pair_outputs=dict(getattr(s, "outputs", {})))

    def _progress(self) -> tuple:
        s = self.state
        return (len(s.results), len(s.pairs), sum(map(len, s.inferred.values())), sum(map(len, s.edge.values())),
                len(getattr(s, "replica_cells", [])), len(getattr(s, "replica_pairs", [])))

    def write_json(self, status: str) -> render.Report:
        start = time.monotonic()
        self._written = self._progress()
        report = self.report(status)
        self.folder.write(f"{self.name}.json", render.json_document(report).encode())
        self._last_end, self._took = time.monotonic(), time.monotonic() - start
        return report

    def arrived(self) -> None:
        """A result arrived: rewrite the partial JSON unless that would cost over a tenth of the time since."""
        if time.monotonic() - self._last_end >= PARTIAL_WRITE_SHARE * self._took:
            self.write_json("running")

    def idle(self) -> None:
        """The run is waiting on a slow case: write whatever arrived since the last write."""
        if self._progress() != self._written:
            self.write_json("running")

    def write_all(self, status: str, with_figures: bool = True) -> render.Report:
        """The JSON first (the report of record), then the figures (unless a user waits on Ctrl-C: drawing them
        costs about a second), Markdown and HTML."""
        self.write_json(status)
        if with_figures:
            drawn = figures.render_all(self.state.results)
            self.pictures = {f"{self.name}-{suffix}.png": picture for suffix, picture in drawn.items()}
        for file_name, (_, png) in self.pictures.items():
            self.folder.write(file_name, png)
        report = self.report(status)
        self.folder.write(f"{self.name}.md", render.markdown(report).encode())
        self.folder.write(f"{self.name}.html", render.html_page(report).encode())
        return report
