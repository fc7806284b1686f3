"""Figures: plain data (tensors, dicts) in, plotly figures out. No widgets here.

Each module pairs a pure ``*_table`` / ``*_data`` / ``*_traces`` function (what the figure
shows, tested) with a ``*_figure`` function that only draws it. One module per lesson topic.
The text-routing figures draw from the one result type, :class:`moe_lab.lm.text_routing.TextRouting`.

Where each figure is used (a lesson calls it directly, or through the widget in brackets):

    lesson 00  params.py      params_summary, params_figure  [ParamsCalculator]
    lesson 01  router.py      router_heatmap_table, router_heatmap_figure  [RouterHeatmap]
    lesson 02  capacity.py    capacity_grid_table, capacity_grid_figure  [CapacityGrid]
    lesson 03  explorer.py    route_text, byte_router_fn, explorer_traces, explorer_figure
                              [RoutingExplorer]
    lesson 04  dashboard.py   dashboard_data, dashboard_figure [TrainingDashboard],
                              compare_runs_figure
    lesson 05  lm.py          loss_curves_figure, capacity_sweep_table, capacity_sweep_figure,
                              specialisation_heatmap_figure, lm_route_fn
    lesson 05  dashboard.py   dashboard_data, dashboard_figure  [TrainingDashboard]
    lesson 05  explorer.py    explorer_traces, explorer_figure  [RoutingExplorer]
    lesson 06  efficiency.py  bench_rows, load_recorded_bench, ratio_table, ratio_figure,
                              scaling_figure, padding_table, padding_figure, profile_summary,
                              profile_figure, memory_figure
    lesson 07  parallel.py    tokens_sent_table, tokens_sent_figure, exchange_cost_table,
                              exchange_cost_figure
    lesson 08  beyond_topk.py choice_loads, choice_loads_figure [ExpertChoiceExplorer],
                              slot_weights_heatmap_figure
    lesson 08  lm.py          loss_curves_figure
    lesson 09  real_routing.py  real_routing_table, real_routing_figure  [RealRoutingExplorer]
    lesson 10  inference.py   traffic_table, traffic_figure [TrafficExplorer], hit_rate_figure,
                              timing_figure
    lesson 11  balance_scope.py  scope_points, scope_figure
"""
