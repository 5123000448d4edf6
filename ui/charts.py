"""Data frames for Gradio line plots with one line per series."""

from __future__ import annotations

import pandas as pd


def series_frame(rows: list[tuple[int, float, str]], columns: tuple[str, str, str],
                 series: tuple[str, ...]) -> pd.DataFrame:
    """(x, y, series) rows as typed columns. With no rows yet, one blank (NaN) point per series: a colour-split
    LinePlot that first receives data while its tab is hidden otherwise never draws its lines (Gradio 6.31)."""
    x, y, colour = columns
    # Two blank points per series, at 0 and 100: one alone made a single axis tick labelled "0.000000".
    rows = rows or [(x_value, float("nan"), name) for name in series for x_value in (0, 100)]
    return pd.DataFrame(rows, columns=list(columns)).astype({x: int, y: float, colour: str})
