#!/usr/bin/env python
"""Shared-memory model of the CUDA-core correlation forward (a prediction, not a timing).

For one channel of one block, counts the shared-memory wavefronts that the warps' loads need and
the FFMA issue cycles, for register tiles of 8 output columns × TDT displacements, with the
input2 values read one by one (``scalar``) or in whole 16-byte loads (``vector``, TDT a multiple
of 4). Rules: a 32-bit load takes one wavefront per distinct word in its busiest bank; a 128-bit
load is four phases of 8 lanes, each taking one wavefront per distinct word in its busiest
bank. An SM serves one wavefront and issues four warp-wide FFMA per cycle, so the efficiency is
useful multiply-adds / (128 · max(wavefronts, FFMA / 4)).

    python benchmarks/model_correlation_smem.py
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict

COLUMNS_PER_THREAD = 8  # kForwardTXT
MAX_THREADS = 256  # kForwardThreads


def wavefronts(byte_addresses: list[int], width: int) -> int:
    """Wavefronts of one warp-wide load of ``width`` bytes per lane (4 or 16)."""
    lanes_per_phase = {4: 32, 16: 8}[width]
    total = 0
    for start in range(0, len(byte_addresses), lanes_per_phase):
        banks: dict[int, set[int]] = defaultdict(set)
        for address in byte_addresses[start:start + lanes_per_phase]:
            for word in range(address // 4, address // 4 + width // 4):
                banks[word % 32].add(word)
        total += max(len(words) for words in banks.values())
    return total


def efficiency(patch: int, width: int, tdt: int, vector: bool) -> float:
    """Predicted fraction of the fp32 FMA peak for a ``patch``-wide row of ``width`` columns."""
    txt = COLUMNS_PER_THREAD
    groups_d = math.ceil(patch / tdt)
    groups_x = min(math.ceil(width / txt), max(1, MAX_THREADS // groups_d))
    threads = groups_x * groups_d
    smem = ffma = 0
    for warp in range(math.ceil(threads / 32)):
        lanes = range(32 * warp, min(32 * warp + 32, threads))
        x0 = [(t // groups_d) * txt for t in lanes]
        d0 = [(t % groups_d) * tdt for t in lanes]
        smem += sum(wavefronts([4 * (x + 4 * k) for x in x0], 16) for k in range(txt // 4))
        needed = txt + tdt - 1
        if vector:
            smem += sum(wavefronts([4 * (x + d + 4 * k) for x, d in zip(x0, d0)], 16)
                        for k in range(math.ceil(needed / 4)))
        else:
            smem += sum(wavefronts([4 * (x + d + k) for x, d in zip(x0, d0)], 4)
                        for k in range(needed))
        ffma += txt * tdt
    tiles = math.ceil(width / (groups_x * txt))
    return width * patch / (128 * tiles * max(smem, ffma / 4))


def _case(text: str) -> tuple[int, int]:
    try:
        patch, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PATCHxCOLUMNS, e.g. 25x107, got {text!r}")
    if patch < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"patch and columns must be >= 1, got {text!r}")
    return patch, width


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", type=_case, default=[(25, 107), (9, 214), (9, 32)],
                        metavar="PATCHxCOLUMNS", help="patch widths and output row widths")
    args = parser.parse_args(argv)
    print("| patch | columns | 8×5, scalar loads (before) | 8×4, 16-byte loads (now) |")
    print("|---:|---:|---:|---:|")
    for patch, width in args.cases:
        before = efficiency(patch, width, 5, vector=False)
        now = efficiency(patch, width, 4, vector=True)
        print(f"| {patch} | {width} | {before:.0%} | {now:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
