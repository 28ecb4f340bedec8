"""The report's figures: a heat map of error/bound and accuracy scatter plots, embedded in the HTML."""

import numpy as np

from bnconf.conformance.battery import CellResult, QuantityRow
from bnconf.reports import figures, render


def _results():
    a = CellResult("a", "c", "cpu", "float32", "train_forward", "ran",
                   rows=[QuantityRow("y", "conforms", max_ratio=0.5), QuantityRow("running_var", "known discrepancy", max_ratio=3.0),
                         QuantityRow("running_mean", "NON-CONFORMANT (momentum reversed)", max_ratio=40.0)],
                   points=[[10.0, 64, "y", 1e-7, 0.5], [1e3, 4096, "y", 1e-5, 0.2], [1e3, 4096, "dx", 1.0, 0.2]])
    b = CellResult("b", "c", "cpu", "float16", "eval_forward", "ran", rows=[QuantityRow("y", "conforms", max_ratio=0.1)])
    return [a, b]


def test_the_heat_map_holds_the_worst_ratio_per_backend_dtype_and_quantity_and_marks_why_it_exceeds_one():
    backends, columns, matrix, marks = figures.heatmap_matrix(_results())
    assert backends == ["a", "b"]
    assert matrix[0, columns.index(("float32", "running_var"))] == 3.0
    assert np.isnan(matrix[1, columns.index(("float32", "y"))])  # b ran no float32 cell
    assert marks == {(0, columns.index(("float32", "running_var"))): figures.RECORDED,
                     (0, columns.index(("float32", "running_mean"))): figures.FAILED}


def test_the_scatter_takes_the_float32_training_forward_points_of_y_only():
    xs, ys = figures.scatter_points(_results(), "conditioning")["a"]
    assert list(xs) == [10.0, 1e3] and list(ys) == [1e-7, 1e-5]
    assert list(figures.scatter_points(_results(), "length")["a"][0]) == [64, 4096]


def test_every_figure_is_a_png_and_the_html_embeds_it():
    pictures = figures.render_all(_results())
    assert set(pictures) == {"heatmap", "conditioning", "length"}
    assert all(png.startswith(b"\x89PNG") for _, png in pictures.values())
    page = render.html_page(render.Report(_results(), {}, 0, 1, True, figures={f"r-{k}.png": v for k, v in pictures.items()}))
    assert page.count("data:image/png;base64,") == 3


def _cpu_like_results():
    """34 backends with the CPU report's longest names x 4 dtypes x 9 quantities: the committed heat map's size."""
    names = ["tf.nn.batch_normalization+ExponentialMovingAverage[tutorial layer][train eps hard-coded 1e-5]",
             "keras.layers.BatchNormalization[tensorflow, mixed_bfloat16]"] + [f"torch.nn.BatchNorm{i}d" for i in range(32)]
    quantities = ["dbeta", "dgamma", "dx", "running_mean", "running_var", "saved_invstd", "saved_mean", "saved_var", "y"]
    return [CellResult(b, "c", "cpu", d, "train_forward", "ran",
                       rows=[QuantityRow(q, "conforms", max_ratio=0.5) for q in quantities])
            for b in names for d in ("float64", "float32", "float16", "bfloat16")]


def test_the_heat_map_labels_are_whole_readable_and_apart_and_it_fits_a_1400_px_page():
    import io

    import matplotlib.image

    results = _cpu_like_results()
    fig = figures.heatmap_figure(results)
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    columns = [t.get_text() for t in ax.get_xticklabels()]
    assert columns == ["dbeta", "dgamma", "dx", "running_mean", "running_var", "saved_invstd", "saved_mean", "saved_var",
                       "y"] * 4
    (top,) = ax.child_axes  # the dtypes, once above each group of columns
    assert [t.get_text() for t in top.get_xticklabels()] == ["float64", "float32", "float16", "bfloat16"]
    rows = ax.get_yticklabels()
    assert [t.get_text().replace("\n", "") for t in rows] == sorted({c.backend for c in results})  # whole names, wrapped
    assert all(t.get_fontsize() >= 8 for t in rows + ax.get_xticklabels())
    boxes = sorted((t.get_window_extent(renderer) for t in rows), key=lambda b: b.y0)
    assert all(lower.y1 <= upper.y0 + 0.5 for lower, upper in zip(boxes, boxes[1:]))  # no two backend labels overlap
    png = figures.heatmap(results)
    height, width = matplotlib.image.imread(io.BytesIO(png)).shape[:2]
    assert width <= 1370, width  # shown at its own size in the page: no label shrunk
    assert figures.backend_label("a" * 10 + "[b, c]") == "a" * 10 + "[b, c]"
    assert figures.backend_label("x" * 40 + "+yyyyyyyyyy[z]", 48) == "x" * 40 + "\n+yyyyyyyyyy[z]"
    assert figures.backend_label("x" * 50, 48) == "x" * 48 + "\nxx"  # nowhere to break: at the width
