"""The report's pictures, as PNG bytes: a heat map of error/bound and accuracy against conditioning and
against reduction length. matplotlib (Agg) is imported here only, when a report is written.

    heatmap(results)              worst error/bound per (backend) x (dtype, quantity), log colour scale
    scatter(results, axis)        normwise error of y (float32 training forward) against max |mean|/std
                                  (axis="conditioning") or values per channel (axis="length"), per backend
"""

import io

import numpy as np

from ..conformance.status import RowVerdict

SCATTER_DTYPE, SCATTER_MODE, SCATTER_QUANTITY = "float32", "train_forward", "y"
_DTYPES = ("float64", "float32", "float16", "bfloat16")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


RECORDED, FAILED = "R", "!"  # heat-map marks: above the bound as a recorded discrepancy, or not conforming


def heatmap_matrix(results) -> tuple[list[str], list[tuple[str, str]], np.ndarray, dict]:
    """(backends, (dtype, quantity) columns, worst error/bound with NaN where nothing ran, marks): `marks`
    maps (row, column) to "!" where a quantity is NON-CONFORMANT, else to "R" where it exceeds the declared
    bound only as a recorded known discrepancy."""
    worst: dict[tuple[str, str, str], float] = {}
    mark: dict[tuple[str, str, str], str] = {}
    for c in results:
        for r in c.rows:
            key = (c.backend, c.dtype, r.quantity)
            worst[key] = max(worst.get(key, 0.0), r.max_ratio)
            verdict = RowVerdict(r.verdict)
            if verdict is RowVerdict.NON_CONFORMANT:
                mark[key] = FAILED
            elif verdict is RowVerdict.KNOWN and r.max_ratio > 1 and mark.get(key) != FAILED:
                mark[key] = RECORDED
    backends = sorted({k[0] for k in worst})
    columns = sorted({k[1:] for k in worst}, key=lambda dq: (_DTYPES.index(dq[0]) if dq[0] in _DTYPES else 9, dq[1]))
    matrix = np.full((len(backends), len(columns)), np.nan)
    for (b, d, q), v in worst.items():
        matrix[backends.index(b), columns.index((d, q))] = v
    marks = {(backends.index(b), columns.index((d, q))): m for (b, d, q), m in mark.items()}
    return backends, columns, matrix, marks


def heatmap(results) -> bytes | None:
    backends, columns, matrix, marks = heatmap_matrix(results)
    if not backends:
        return None
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    fig, ax = plt.subplots(figsize=(0.32 * len(columns) + 6, 0.3 * len(backends) + 2))
    shown = np.where(np.isnan(matrix), np.nan, np.clip(matrix, 1e-3, 1e3))
    image = ax.imshow(shown, norm=LogNorm(1e-3, 1e3), cmap="RdYlGn_r", aspect="auto")
    ax.set_xticks(range(len(columns)), [f"{d} {q}" for d, q in columns], rotation=90, fontsize=7)
    ax.set_yticks(range(len(backends)), backends, fontsize=7)
    for (i, j), m in marks.items():
        ax.text(j, i, m, ha="center", va="center", fontsize=7, fontweight="bold" if m == FAILED else "normal")
    fig.colorbar(image, ax=ax, label="worst error / bound")
    ax.set_title(f"Worst error in units of the error model's bound\n({RECORDED}: above it as a recorded known "
                 f"discrepancy; {FAILED}: NON-CONFORMANT, see the table)", fontsize=9)
    return _png(fig)


def scatter_points(results, axis: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """backend -> (x, normwise error) of the float32 training-forward y points."""
    column = {"conditioning": 0, "length": 1}[axis]
    out = {}
    for c in results:
        if c.dtype == SCATTER_DTYPE and c.mode == SCATTER_MODE:
            pts = [(p[column], p[3]) for p in c.points if p[2] == SCATTER_QUANTITY]
            if pts:
                xs, ys = np.array(pts, dtype=float).T
                out[c.backend] = (xs, ys)
    return out


def scatter(results, axis: str) -> bytes | None:
    points = scatter_points(results, axis)
    if not points:
        return None
    plt = _pyplot()
    cols = min(4, len(points))
    rows = -(-len(points) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False, sharex=True, sharey=True)
    floor = np.finfo(np.float32).eps / 2 / 16  # zero errors are drawn just below the unit roundoff
    for ax, (backend, (xs, ys)) in zip(axes.flat, sorted(points.items())):
        ax.loglog(np.maximum(xs, 1e-3), np.maximum(ys, floor), ".", markersize=3)
        ax.axhline(np.finfo(np.float32).eps / 2, color="gray", linewidth=0.5)
        ax.set_title(backend, fontsize=7)
    for ax in axes.flat[len(points):]:
        ax.set_visible(False)
    label = "max |mean| / std" if axis == "conditioning" else "values per channel"
    fig.supxlabel(label)
    fig.supylabel("normwise error of y (float32)")
    fig.suptitle(f"Training-forward accuracy against {label} (gray: float32 unit roundoff)")
    return _png(fig)


FIGURES = {  # file suffix -> (title, renderer)
    "heatmap": ("Error/bound heat map", heatmap),
    "conditioning": ("Accuracy against |mean|/std", lambda results: scatter(results, "conditioning")),
    "length": ("Accuracy against reduction length", lambda results: scatter(results, "length")),
}


def render_all(results) -> dict[str, tuple[str, bytes]]:
    """suffix -> (title, PNG) for every figure that has data."""
    out = {}
    for suffix, (title, draw) in FIGURES.items():
        png = draw(results)
        if png:
            out[suffix] = (title, png)
    return out
