"""Expert placement on devices: contiguous, greedy packing, EPLB-style replication, at exact small
cases worked out by hand; and the properties every placement keeps."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_lab.analysis.placement import (
    balanced_packing,
    contiguous_placement,
    device_loads,
    greedy_placement,
    replicate_hottest,
    replicated_placement,
)


def test_contiguous_at_a_known_point():
    p = contiguous_placement(torch.tensor([4.0, 3.0, 2.0, 1.0]), 2)
    assert p.experts == ((0, 1), (2, 3))
    assert p.device_load.tolist() == [7.0, 3.0]
    assert p.busiest_over_mean == pytest.approx(7 / 5)


def test_greedy_packing_at_a_known_point():
    # 4 -> d0; 3 -> d1; 2 -> d1 (3 < 4), d1 full; 1 -> d0
    p = greedy_placement(torch.tensor([4.0, 3.0, 2.0, 1.0]), 2)
    assert p.experts == ((0, 3), (1, 2))
    assert p.device_load.tolist() == [5.0, 5.0] and p.busiest_over_mean == 1.0


def test_greedy_packing_respects_slots_even_when_it_hurts():
    # 8 -> d0; 2 -> d1; then the 1s go to d1 until it is full (4 slots), the rest to d0
    p = greedy_placement(torch.tensor([8.0, 1, 1, 1, 1, 1, 1, 2]), 2)
    assert p.experts == ((0, 4, 5, 6), (7, 1, 2, 3))
    assert p.device_load.tolist() == [11.0, 5.0] and p.busiest_over_mean == pytest.approx(11 / 8)


def test_replication_splits_the_hot_expert():
    load = torch.tensor([6.0, 2.0, 2.0, 2.0])
    # spare slot 1: 6/1 is the highest -> 2 copies (3 each); spare 2: 3 > 2 -> 3 copies (2 each)
    assert replicate_hottest(load, 6).tolist() == [3, 1, 1, 1]
    assert replicate_hottest(load, 4).tolist() == [1, 1, 1, 1]
    p = replicated_placement(load, 2, 6)
    assert p.device_load.tolist() == [6.0, 6.0] and p.busiest_over_mean == 1.0
    assert sorted(e for slots in p.experts for e in slots) == [0, 0, 0, 1, 2, 3]
    assert greedy_placement(load, 2).busiest_over_mean == pytest.approx(8 / 6)  # without: 8 vs 4


def test_replication_ties_go_to_the_lower_expert():
    assert replicate_hottest(torch.tensor([3.0, 3.0, 1.0]), 5).tolist() == [2, 2, 1]
    assert replicate_hottest(torch.tensor([3.0, 3.0, 1.0]), 4).tolist() == [2, 1, 1]


def test_device_loads_reuses_a_placement_on_other_loads():
    p = replicated_placement(torch.tensor([6.0, 2.0, 2.0, 2.0]), 2, 6)
    # on a load where expert 3 is hot, the placement made for expert 0 no longer balances
    other = device_loads(p.experts, p.replicas, torch.tensor([2.0, 2.0, 2.0, 6.0]))
    assert other.sum() == 12.0 and other.max() > 6.0


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 4), st.randoms(use_true_random=False))
def test_every_placement_keeps_all_load_and_fills_each_device(num_devices, per_device, spare_per_device, rnd):
    num_experts = num_devices * per_device
    load = torch.tensor([float(rnd.randint(0, 50)) for _ in range(num_experts)])
    num_slots = num_experts + num_devices * spare_per_device
    placements = [contiguous_placement(load, num_devices), greedy_placement(load, num_devices),
                  replicated_placement(load, num_devices, num_slots)]
    for p in placements:
        assert len(p.experts) == num_devices
        assert len({len(slots) for slots in p.experts}) == 1  # the same number of slots everywhere
        torch.testing.assert_close(p.device_load.sum(), load.double().sum())  # nothing lost
        assert sorted(e for s in p.experts for e in s) == sorted(
            e for e in range(num_experts) for _ in range(int(p.replicas[e])))
        assert p.busiest_over_mean >= 1.0 - 1e-12


def test_balanced_packing_gives_each_device_the_same_count():
    devices = balanced_packing(torch.tensor([5.0, 4.0, 3.0, 3.0, 2.0, 1.0]), 3)
    assert [len(d) for d in devices] == [2, 2, 2]
    assert devices == [[0, 5], [1, 4], [2, 3]]


@pytest.mark.parametrize("call,error,name", [
    (lambda: contiguous_placement([1.0, 2.0], 2), TypeError, "expert_load"),
    (lambda: contiguous_placement(torch.ones(2, 2), 2), ValueError, "expert_load"),
    (lambda: contiguous_placement(torch.tensor([1.0, -1.0]), 2), ValueError, "expert_load"),
    (lambda: contiguous_placement(torch.tensor([1.0, float("nan")]), 2), ValueError, "expert_load"),
    (lambda: contiguous_placement(torch.ones(6), 4), ValueError, "num_devices"),
    (lambda: greedy_placement(torch.ones(4), 0), ValueError, "num_devices"),
    (lambda: replicated_placement(torch.ones(4), 2, 3), ValueError, "num_slots"),
    (lambda: replicated_placement(torch.ones(4), 2, 7), ValueError, "num_slots"),
    (lambda: replicate_hottest(torch.ones(4), 2.5), TypeError, "num_slots"),
])
def test_bad_input_is_refused_by_name(call, error, name):
    with pytest.raises(error, match=name):
        call()
