"""Size matching: find the fractional CRF at which a clip codes to a target size.

Bytes fall roughly exponentially with CRF (about half per +6), so the search
interpolates log(bytes) linearly between bracketing CRFs (regula falsi with
the Illinois fix), which converges in a handful of encodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from sac_ros.core.errors import SacError

CRF_MIN, CRF_MAX = 0.0, 51.0


@dataclass
class MatchResult:
    crf: float
    num_bytes: int
    target_bytes: int
    encodes: int

    @property
    def error(self) -> float:
        """Relative size error, (bytes - target) / target."""
        return (self.num_bytes - self.target_bytes) / self.target_bytes


class _Sizes:
    """The encodes of one search: log(bytes / target) per CRF, each CRF coded once."""

    def __init__(self, bytes_at: Callable[[float], int], target_bytes: int, tolerance: float):
        self.bytes_at, self.target_bytes, self.tolerance = bytes_at, target_bytes, tolerance
        self.log_target = math.log(target_bytes)
        self.cache: dict[float, int] = {}

    def f(self, crf: float) -> float:
        crf = round(crf, 3)  # the encoders take CRF to 3 decimals
        if crf not in self.cache:
            self.cache[crf] = self.bytes_at(crf)
        return math.log(max(self.cache[crf], 1)) - self.log_target

    def done(self, crf: float) -> MatchResult:
        crf = round(crf, 3)
        return MatchResult(crf, self.cache[crf], self.target_bytes, len(self.cache))

    def within(self, value: float) -> bool:
        return abs(math.exp(value) - 1.0) <= self.tolerance


def match_crf(bytes_at: Callable[[float], int], target_bytes: int, tolerance: float = 0.01,
              lo: float = CRF_MIN, hi: float = CRF_MAX, guess: float | None = None,
              max_encodes: int = 16) -> MatchResult:
    """Find crf in [lo, hi] with |bytes_at(crf) / target - 1| <= tolerance.

    Raises SacError when the target lies outside what [lo, hi] can reach.
    """
    if target_bytes <= 0:
        raise SacError("target size must be positive")
    sizes = _Sizes(bytes_at, target_bytes, tolerance)
    lo_bound, hi_bound = lo, hi
    if guess is not None:
        g = min(max(guess, lo), hi)
        fg = sizes.f(g)
        if sizes.within(fg):
            return sizes.done(g)
        lo, f_lo, hi, f_hi = _bracket(sizes.f, g, fg, lo_bound, hi_bound)
    else:
        f_lo, f_hi = sizes.f(lo), sizes.f(hi)
    for crf, value in ((lo, f_lo), (hi, f_hi)):
        if sizes.within(value):
            return sizes.done(crf)
    if f_hi > 0:
        raise SacError(f"target size {target_bytes} bytes is out of reach for CRF "
                       f"{lo_bound:g}-{hi_bound:g}: even CRF {hi:g} gives "
                       f"{sizes.cache[round(hi, 3)]} bytes")
    if f_lo < 0:
        raise SacError(f"target size {target_bytes} bytes is out of reach for CRF "
                       f"{lo_bound:g}-{hi_bound:g}: even CRF {lo:g} gives only "
                       f"{sizes.cache[round(lo, 3)]} bytes")
    found = _regula_falsi(sizes, lo, f_lo, hi, f_hi, max_encodes)
    if found is not None:
        return found
    cache = sizes.cache
    best = min(cache, key=lambda c: abs(cache[c] - target_bytes))
    result = MatchResult(best, cache[best], target_bytes, len(cache))
    if abs(result.error) > tolerance:
        raise SacError(f"could not match {target_bytes} bytes within {tolerance:.1%}: "
                       f"closest was CRF {best:g} at {result.error:+.2%}")
    return result


def _bracket(f: Callable[[float], float], g: float, fg: float, lo_bound: float,
             hi_bound: float, step: float = 6.0) -> tuple[float, float, float, float]:
    """Bracket the target around the guess ``g`` with steps of ``step`` CRF (6: about 2x
    in size), within [lo_bound, hi_bound]: (lo, f(lo), hi, f(hi))."""
    if fg > 0:  # too big: raise CRF
        lo, f_lo = g, fg
        hi = min(g + step, hi_bound)
        f_hi = f(hi)
        while f_hi > 0 and hi < hi_bound:
            lo, f_lo, hi = hi, f_hi, min(hi + step, hi_bound)
            f_hi = f(hi)
    else:
        hi, f_hi = g, fg
        lo = max(g - step, lo_bound)
        f_lo = f(lo)
        while f_lo < 0 and lo > lo_bound:
            hi, f_hi, lo = lo, f_lo, max(lo - step, lo_bound)
            f_lo = f(lo)
    return lo, f_lo, hi, f_hi


def _regula_falsi(sizes: _Sizes, lo: float, f_lo: float, hi: float, f_hi: float,
                  max_encodes: int) -> MatchResult | None:
    """Interpolate log(bytes) between the bracketing CRFs (Illinois variant); None when
    no CRF within the tolerance was found in ``max_encodes`` steps."""
    side = 0
    for _ in range(max_encodes):
        crf = hi - f_hi * (hi - lo) / (f_hi - f_lo)
        if hi - lo < 1e-3:
            break
        value = sizes.f(crf)
        if sizes.within(value):
            return sizes.done(crf)
        if value > 0:
            lo, f_lo = crf, value
            if side == -1:
                f_hi /= 2  # Illinois: stop one end from sticking
            side = -1
        else:
            hi, f_hi = crf, value
            if side == 1:
                f_lo /= 2
            side = 1
    return None
