"""Lesson 09's figures: the pure tables behind the real-routing heatmaps, and the explorer widget."""

import pytest
import torch

from moe_lab.analysis.real_routing import coactivation, domain_specialisation, load_real_routing
from moe_lab.viz.real_routing import VIEWS, real_routing_figure, real_routing_table
from moe_lab.widgets.real_routing import RealRoutingExplorer


@pytest.fixture(scope="module")
def real():
    return load_real_routing()


def test_specialisation_table_is_the_share_per_domain(real):
    table = real_routing_table(real["mistral"], "domain specialisation", 2)
    assert torch.tensor(table.z).shape == (5, 8) and table.reference == 25.0
    torch.testing.assert_close(torch.tensor(table.z, dtype=torch.float64),
                               domain_specialisation(real["mistral"], 15), atol=5e-3, rtol=0)
    # each domain's row sums to 100 K percent
    torch.testing.assert_close(torch.tensor(table.z).sum(1), torch.full((5,), 200.0), atol=0.05, rtol=0)
    assert "layer 15" in table.title


def test_coactivation_table(real):
    table = real_routing_table(real["olmoe"], "co-activation", 0)
    assert len(table.z) == 64 and len(table.z[0]) == 64 and table.reference == 1 / 64
    torch.testing.assert_close(torch.tensor(table.z, dtype=torch.float64), coactivation(real["olmoe"], 0),
                               atol=5e-5, rtol=0)
    assert table.row_labels[0] == "L0 E0" and table.column_labels[-1] == "L7 E63"
    figure = real_routing_figure(table)
    assert figure.data[0].type == "heatmap" and figure.layout.title.text == table.title


def test_unknown_view_is_refused(real):
    with pytest.raises(ValueError, match="view"):
        real_routing_table(real["olmoe"], "histogram", 0)


def test_explorer_redraws_on_every_control(real):
    explorer = RealRoutingExplorer(real)
    assert explorer.view.value == VIEWS[0] and "OLMoE-1B-7B, layer 0" in explorer.table.title
    explorer.index.value = 2
    assert "layer 15" in explorer.table.title
    explorer.view.value = "co-activation"  # the layer list becomes the layer pairs
    assert explorer.index.options[1][0] == "7 -> 15" and "layer 7 | expert at layer 0" in explorer.table.title
    explorer.model.value = "mistral"
    assert len(explorer.table.z) == 8 and explorer.output.outputs  # the figure was sent
