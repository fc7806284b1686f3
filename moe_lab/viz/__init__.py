"""Figures: plain data (tensors, dicts) in, plotly figures out. No widgets here.

Each module pairs a pure ``*_table`` / ``*_data`` function (what the figure shows, tested) with a
``*_figure`` function that only draws it. One module per lesson topic.
"""
