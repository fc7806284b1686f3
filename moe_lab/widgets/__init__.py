"""Live widgets: ipywidgets controls wired to the core and to the figures of :mod:`moe_lab.viz`.

Each widget draws a plain ``go.Figure`` (from a pure table function) and shows it in an
``ipywidgets.Output`` as the plotly JSON mimetype (:mod:`moe_lab.widgets._output`), replacing the
Output's content on every redraw. No ``go.FigureWidget``: in plotly >= 6 each one ships a ~5 MB
JavaScript bundle over the kernel websocket, and the course keeps each lesson under 1 MB; a
redraw sends only the figure's JSON (a few kB). Every widget keeps the last ``figure`` it drew
(and its table) for tests and learners, and keeps working on odd input (empty text, unknown
characters, extreme sliders).
"""
