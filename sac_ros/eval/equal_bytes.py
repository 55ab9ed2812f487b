"""The ``sac eval`` experiment: uniform vs SAC (dual_crf, roi_qp) on a clip, at equal bytes
and by ROI BD-rate.

Per codec: the RD sweeps (uniform, SAC at each dCRF, roi_qp at each offset) with their
BD-rates against uniform; the uniform baseline, the SAC pair, the uniform CRF matched to
the pair's bytes, a roi_qp run matched to them (first offset), and a SAC run with a fixed
ROI CRF matched to the baseline's bytes; PNG plots. Returns the results; prints nothing.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sac_ros.core.codec import CODECS, EncoderSettings
from sac_ros.core.errors import SacError
from sac_ros.core.io import Clip
from sac_ros.eval.coder import BdResult, ClipCoder, RunResult, SweepPoint, bd_against, sweep


@dataclass(frozen=True)
class EqualBytesPlan:
    """What to run, per codec (config ``eval``, with the command line's overrides)."""

    codecs: tuple[str, ...]
    crf_sweep: dict[str, list[float]]
    delta_crfs: tuple[float, ...]
    roi_qp_offsets: dict[str, list[float]]
    uniform_crf: dict[str, float]               # the uniform baseline
    pair: dict[str, tuple[float, float]]         # the SAC pair of the equal-bytes table
    matched_roi_crf: dict[str, float]            # SAC ROI CRF matched to the baseline's bytes
    tolerance: float = 0.01
    block_size: int = 16

    def frames_to_code(self, frames: int) -> int:
        """About how many frames the experiment codes (for a progress bar)."""
        codec = self.codecs[0]
        runs = (len(self.crf_sweep[codec]) * (1 + len(self.delta_crfs)
                                               + len(self.roi_qp_offsets[codec])) + 5)
        return frames * runs * len(self.codecs)


@dataclass
class EqualBytesResult:
    records: list[dict] = field(default_factory=list)
    bd_rates: list[BdResult] = field(default_factory=list)
    bd_rates_roi_qp: list[BdResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self, clip: Clip, mask: str, settings: EncoderSettings) -> dict:
        """The JSON document (``results.json``)."""
        return {
            "input": clip.source, "width": clip.width, "height": clip.height,
            "frames": len(clip.frames), "fps": clip.fps, "mask": mask,
            "preset": settings.preset, "gop": settings.gop, "records": self.records,
            "bd_rates": [bd.__dict__ for bd in self.bd_rates],
            "bd_rates_roi_qp": [bd.__dict__ for bd in self.bd_rates_roi_qp],
            "notes": self.notes,
        }


def run_equal_bytes(clip: Clip, blocks, settings: EncoderSettings, plan: EqualBytesPlan,
                    out: Path, progress: Callable[[int], None] | None = None
                    ) -> EqualBytesResult:
    """Run the experiment on ``clip``; write ``rd_*.png`` and ``crop_*.png`` into ``out``."""
    from sac_ros.eval import plots  # matplotlib: imported only when needed

    coder = ClipCoder(clip.frames, blocks, settings, progress, plan.block_size)
    result = EqualBytesResult()
    keep = len(clip.frames) // 2
    for codec in plan.codecs:
        curves = _sweeps(coder, codec, plan, result)
        rows, equal_bytes = _equal_bytes_rows(coder, codec, plan, keep, result.notes)
        result.records += [r.record() for r in rows]
        label = CODECS[codec][2]
        title = (f"{label} {settings.preset}: {clip.width}x{clip.height}, {len(clip.frames)} "
                 f"frames, ROI {rows[0].roi_share:.0%} of pixels")
        plots.rd_curves(out / f"rd_{label}.png", title, curves, equal_bytes)
        plots.side_by_side(out / f"crop_{label}.png", clip.frames[keep],
                           [(f"{r.method}: {r.kb_per_frame:.1f} kB/frame", r.sample_frame)
                            for r in equal_bytes],
                           coder.pixel_mask(keep))
    return result


def _sweeps(coder: ClipCoder, codec: str, plan: EqualBytesPlan,
            result: EqualBytesResult) -> dict[str, list[SweepPoint]]:
    """The RD curves of one codec; their BD-rates against uniform go into ``result``."""
    crfs = plan.crf_sweep[codec]
    curves = {"uniform": sweep(coder, codec, crfs, None)}
    for delta in plan.delta_crfs:
        name = f"SAC dCRF +{delta:g}"
        curves[name] = sweep(coder, codec, crfs, float(delta))
        result.bd_rates.append(bd_against(curves["uniform"], curves[name], codec, float(delta)))
    for offset in plan.roi_qp_offsets[codec]:
        name = f"ROI-QP {offset:+g}"
        curves[name] = sweep(coder, codec, crfs, offset, "roi_qp")
        result.bd_rates_roi_qp.append(bd_against(curves["uniform"], curves[name], codec,
                                                 offset, "roi_qp"))
    return curves


def _matched(run: RunResult, reference: RunResult) -> RunResult:
    run.method += " (= size)"
    run.size_match_error_pct = 100.0 * (run.total_bytes / reference.total_bytes - 1.0)
    return run


def _equal_bytes_rows(coder: ClipCoder, codec: str, plan: EqualBytesPlan, keep: int,
                      notes: list[str]) -> tuple[list[RunResult], list[RunResult]]:
    """(the table's rows, the runs at the SAC pair's bytes) of one codec."""
    ref_crf = plan.uniform_crf[codec]
    roi_crf, non_crf = plan.pair[codec]
    uniform_ref = coder.run(codec, "uniform", ref_crf, full=True, keep_frame=keep)
    sac_pair = coder.run(codec, "dual_crf", roi_crf, non_crf, full=True, keep_frame=keep)
    match = coder.match_uniform(codec, sac_pair.total_bytes, plan.tolerance, guess=ref_crf)
    uniform_eq = _matched(coder.run(codec, "uniform", match.crf, full=True, keep_frame=keep),
                          sac_pair)
    rows = [uniform_ref, uniform_eq, sac_pair]
    equal_bytes = [uniform_eq, sac_pair]
    offsets = plan.roi_qp_offsets[codec]
    if offsets:
        # One stream with the first configured offset, at the SAC pair's bytes.
        offset = offsets[0]
        try:
            qp_match = coder.match_roi_qp(codec, offset, sac_pair.total_bytes, plan.tolerance,
                                          guess=roi_crf)
            roi_qp_eq = _matched(coder.run(codec, "roi_qp", qp_match.crf,
                                           min(qp_match.crf + offset, 51), full=True,
                                           keep_frame=keep), sac_pair)
            rows.append(roi_qp_eq)
            equal_bytes.append(roi_qp_eq)
        except SacError as exc:
            notes.append(f"{codec}: no roi_qp run with offset {offset:+g} matches the SAC "
                         f"pair's size ({exc})")
    matched_roi = plan.matched_roi_crf[codec]
    try:
        rev = coder.match_non_roi(codec, matched_roi, uniform_ref.total_bytes, plan.tolerance,
                                  guess=matched_roi + 6)
        rows.append(_matched(coder.run(codec, "dual_crf", matched_roi, rev.crf, full=True),
                             uniform_ref))
    except SacError as exc:
        notes.append(f"{codec}: no SAC run with ROI CRF {matched_roi:g} matches uniform "
                     f"CRF {ref_crf:g}'s size ({exc})")
    return rows, equal_bytes


def write_results(document: dict, json_path: Path, csv_path: Path) -> None:
    """``results.json`` (the whole document) and ``results.csv`` (its records)."""
    records = document["records"]
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
