"""Live widgets: ipywidgets controls wired to the core and to the figures of :mod:`moe_lab.viz`.

Each widget redraws into one reused plotly figure (a FigureWidget carries a ~5 MB bundle per
instance) and keeps working on odd input (empty text, unknown characters, extreme sliders).
"""
