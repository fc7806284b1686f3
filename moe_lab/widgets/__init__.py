"""Live widgets: ipywidgets controls wired to the core and to the figures of :mod:`moe_lab.viz`.

Each widget draws a plain ``go.Figure`` (from a pure table function) and shows it in an
``ipywidgets.Output`` as the plotly JSON mimetype (:mod:`moe_lab.widgets._output`), replacing the
Output's content on every redraw. No ``go.FigureWidget``: in plotly >= 6 each one ships a ~5 MB
JavaScript bundle over the kernel websocket, and the course keeps each lesson under 1 MB; a
redraw sends only the figure's JSON (a few kB). Every widget keeps the last ``figure`` it drew
(and its table) for tests and learners, and keeps working on odd input (empty text, unknown
characters, extreme sliders).

Where each widget is used, and the figure module it draws with (in brackets):

    lesson 00  params.py     ParamsCalculator   [viz/params.py]
    lesson 01  router.py     RouterHeatmap      [viz/router.py, the toy byte router]
    lesson 02  capacity.py   CapacityGrid       [viz/capacity.py, the toy byte router]
    lesson 03  explorer.py   RoutingExplorer    [viz/explorer.py, byte_router_fn]
    lesson 04  dashboard.py  TrainingDashboard  [viz/dashboard.py]
    lesson 05  dashboard.py  TrainingDashboard  [viz/dashboard.py]
    lesson 05  explorer.py   RoutingExplorer    [viz/explorer.py, viz.lm.lm_route_fn]
    lesson 08  expert_choice.py  ExpertChoiceExplorer  [viz/beyond_topk.py]
    lesson 09  real_routing.py  RealRoutingExplorer  [viz/real_routing.py]
    lesson 10  inference.py  TrafficExplorer  [viz/inference.py]
    lesson 12  quiz.py       QuizWidget show_quiz  [quizzes/render.py; every lesson's quiz]

``_toy.py`` holds :class:`ToyByteRouter`, a fixed, seeded byte embedding and router (lessons
01-02); ``_output.py`` shows a figure in an Output, and keeps the last figure as a static
fallback for front ends that draw no widgets.
"""
