"""Build the compiled ops now (instead of on first use) and print where they are cached.

Examples::

    python tools/build_ops.py                         # on a machine with a GPU
    python tools/build_ops.py --arch 9.0 --verbose    # compile-only check without a GPU
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from densessl.errors import InputError
from densessl.tools._common import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_ops", description="Compile the CUDA extensions (correlation, fused "
        "propagation top-k) now and report the cache folder (TORCH_EXTENSIONS_DIR or "
        "~/.cache/densessl/ops).")
    parser.add_argument("--arch", help="CUDA architectures, e.g. '9.0' or '8.0;9.0' (sets "
                        "TORCH_CUDA_ARCH_LIST; needed when no GPU is visible)")
    parser.add_argument("--cache-dir", help="build folder root (sets TORCH_EXTENSIONS_DIR)")
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.arch is not None:
            if not args.arch.strip():
                raise InputError("--arch must not be empty")
            os.environ["TORCH_CUDA_ARCH_LIST"] = args.arch
        if args.cache_dir is not None:
            os.environ["TORCH_EXTENSIONS_DIR"] = os.path.abspath(args.cache_dir)

        import torch

        from densessl.ops import _jit, context_topk, correlation

        print(f"CUDA toolkit: {_jit.find_cuda_home() or 'not found'}")
        print(f"cache folder: {_jit.cache_root()}")
        status = 0
        for op in (correlation, context_topk):
            start = time.perf_counter()
            try:
                module = _jit.build_op(op.EXTENSION_NAME, op.CSRC, op.EXTENSION_SOURCES,
                                       op.EXTENSION_HEADERS, verbose=args.verbose)
            except Exception as error:  # noqa: BLE001 - report any build problem in one line
                reason = _jit.short_reason(error)
                print(f"error: building {op.EXTENSION_NAME} failed: {reason}", file=sys.stderr)
                status = 1
                continue
            print(f"built {op.EXTENSION_NAME} in {time.perf_counter() - start:.1f} s: "
                  f"{module.__file__}")
            if torch.cuda.is_available():
                device = torch.device("cuda", torch.cuda.current_device())
                if op.usable_extension(device) is None:
                    print(f"error: {op.EXTENSION_NAME} failed its check against the reference on "
                          f"{device} (see the warning)", file=sys.stderr)
                    status = 1
                else:
                    print(f"checked {op.EXTENSION_NAME} against the reference on {device}: equal")
        return status

    return run_main(body)
