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
