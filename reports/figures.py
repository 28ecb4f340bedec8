"""The report's pictures, as PNG bytes: a heat map of error/bound and accuracy against conditioning and
against reduction length. matplotlib (Agg) is imported here only, when a report is written.

    heatmap(results)              worst error/bound per (backend) x (dtype, quantity), log colour scale; one
                                  column per quantity, grouped under its dtype, sized to the matrix
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


HEATMAP_COLUMN_INCHES, HEATMAP_ROW_INCHES, LABEL_POINTS = 0.24, 0.3, 8
BACKEND_LABEL_CHARS = 56  # a longer backend name is broken into lines (at a '[', '+' or ',' where it can)


def backend_label(name: str, width: int = BACKEND_LABEL_CHARS) -> str:
    """The whole name in lines of at most about `width` characters (joined again they give the name), broken before
    '[' or '+' or after ', '."""
    lines = []
    while len(name) > width:
        comma = name.rfind(", ", 1, width - 1)
        cut = max(name.rfind("[", 1, width), name.rfind("+", 1, width), comma + 2 if comma > 0 else -1)
        cut = cut if cut > 0 else width
        lines.append(name[:cut])
        name = name[cut:]
    return "\n".join(lines + [name])


def dtype_groups(columns: list[tuple[str, str]]) -> list[tuple[str, int, int]]:
    """(dtype, first column, last column) of each run of columns with the same dtype."""
    groups: list[list] = []
    for j, (dtype, _) in enumerate(columns):
        if groups and groups[-1][0] == dtype:
            groups[-1][2] = j
        else:
            groups.append([dtype, j, j])
    return [tuple(g) for g in groups]


def heatmap_figure(results):
    """The heat map as a matplotlib figure (None without data): quantities under their columns at 45 degrees,
    each dtype named once above its group of columns, backend names whole (wrapped), the figure sized to the
    number of rows and columns."""
    backends, columns, matrix, marks = heatmap_matrix(results)
    if not backends:
        return None
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    labels = [backend_label(b) for b in backends]
    label_inches = max(len(line) for label in labels for line in label.split("\n")) * LABEL_POINTS * 0.55 / 72
    row_inches = max(HEATMAP_ROW_INCHES, max(label.count("\n") + 1 for label in labels) * LABEL_POINTS * 1.3 / 72)
    width = label_inches + HEATMAP_COLUMN_INCHES * len(columns) + 1.6
    height = row_inches * len(backends) + 2.4
    fig, ax = plt.subplots(figsize=(width, height))
    shown = np.where(np.isnan(matrix), np.nan, np.clip(matrix, 1e-3, 1e3))
    image = ax.imshow(shown, norm=LogNorm(1e-3, 1e3), cmap="RdYlGn_r", aspect="auto")
    ax.set_xticks(range(len(columns)), [q for _, q in columns], rotation=45, ha="right", rotation_mode="anchor",
                  fontsize=LABEL_POINTS)
    ax.set_yticks(range(len(backends)), labels, fontsize=LABEL_POINTS)
    groups = dtype_groups(columns)
    top = ax.secondary_xaxis("top")
    top.set_xticks([(first + last) / 2 for _, first, last in groups], [d for d, _, _ in groups],
                   fontsize=LABEL_POINTS + 1, fontweight="bold")
    top.tick_params(length=0)
    for _, first, _ in groups[1:]:
        ax.axvline(first - 0.5, color="black", linewidth=1.2)
    for (i, j), m in marks.items():
        ax.text(j, i, m, ha="center", va="center", fontsize=LABEL_POINTS - 1, fontweight="bold" if m == FAILED else "normal")
    fig.colorbar(image, ax=ax, label="worst error / bound", fraction=0.04, pad=0.02)
    ax.set_title(f"Worst error in units of the error model's bound ({RECORDED}: above it as a recorded known "
                 f"discrepancy; {FAILED}: NON-CONFORMANT)", fontsize=LABEL_POINTS + 1, pad=LABEL_POINTS * 2.5)
    return fig


def heatmap(results) -> bytes | None:
    fig = heatmap_figure(results)
    return None if fig is None else _png(fig)


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
    _decade_ticks(axes.flat[0])
    label = "max |mean| / std" if axis == "conditioning" else "values per channel"
    fig.supxlabel(label)
    fig.supylabel("normwise error of y (float32)")
    fig.suptitle(f"Training-forward accuracy against {label} (gray: float32 unit roundoff)")
    return _png(fig)


def _decade_ticks(ax) -> None:
    """At most a few labelled decades and no minor ticks on `ax`'s log axes (and the axes sharing them): tick
    layout on dozens of shared log axes was most of the report's drawing time (6 s of 9)."""
    from matplotlib.ticker import LogLocator, NullLocator

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(numticks=5))
        axis.set_minor_locator(NullLocator())


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
