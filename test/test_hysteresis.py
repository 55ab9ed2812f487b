"""Temporal mask hysteresis: a block stays ROI for N frames after its last ROI pixel."""

from __future__ import annotations

import numpy as np
import pytest

from sac_ros.core.errors import SacError
from sac_ros.core.mask import BlockHysteresis, hold_blocks


def test_block_is_held_exactly_n_frames():
    hysteresis = BlockHysteresis(3)
    on, off = np.array([[True, False]]), np.array([[False, False]])
    seen = [hysteresis.update(m)[0].tolist() for m in (on, off, off, off, off, off, on, off)]
    assert seen == [[True, False], [True, False], [True, False], [True, False],
                    [False, False], [False, False], [True, False], [True, False]]


def test_flicker_is_smoothed_and_static_masks_pass_through():
    rng = np.random.default_rng(1)
    core = np.zeros((6, 8), bool)
    core[3:] = True
    flicker = [core | ((rng.random(core.shape) < 0.5) & np.roll(core, -1, axis=0))
               for _ in range(40)]  # the row above the ROI blinks
    held = hold_blocks(flicker, 2)

    def flips(masks):
        return sum(int((a != b).sum()) for a, b in zip(masks[:-1], masks[1:], strict=True))

    assert flips(held) < flips(flicker) / 3
    assert all((h >= f).all() for h, f in zip(held, flicker, strict=True))  # only ever adds ROI
    static = hold_blocks([core] * 5, 4)
    assert all((s == core).all() for s in static)
    assert all(s is static[0] for s in static)  # equal consecutive masks share one array


def test_zero_is_off_and_shape_change_restarts():
    mask = np.eye(4, dtype=bool)
    assert BlockHysteresis(0).update(mask) is mask
    inverse = ~mask
    held = hold_blocks([mask, inverse], 0)
    assert held[0] is mask and held[1] is inverse
    hysteresis = BlockHysteresis(5)
    hysteresis.update(np.ones((2, 2), bool))
    bigger = np.zeros((3, 3), bool)
    assert not hysteresis.update(bigger).any()  # no history carried to another grid
    hysteresis.update(np.ones((3, 3), bool))
    hysteresis.reset()
    assert not hysteresis.update(bigger).any()


def test_long_runs_do_not_overflow():
    hysteresis = BlockHysteresis(1000)
    mask = np.zeros((2, 2), bool)
    for _ in range(3000):
        out = hysteresis.update(mask)
    assert not out.any()
    mask[0, 0] = True
    assert hysteresis.update(mask)[0, 0]


@pytest.mark.parametrize("value, message", [
    (-1, "outside 0-1000"), (1001, "outside 0-1000"), (1.5, "whole number"),
    (True, "whole number"), ("2", "whole number"),
])
def test_bad_hold(value, message):
    with pytest.raises(SacError, match=message):
        BlockHysteresis(value)
