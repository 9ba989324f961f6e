"""Plotly figure builders. Each takes data (DataFrames, arrays, dicts from the run directory) and
returns a `plotly.graph_objects.Figure`; the dashboard and notebooks only display them."""
