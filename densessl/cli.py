"""``densessl <command> [args]``: thin dispatch to the jobs in :mod:`densessl.tools`.

Every job module exposes ``main(argv: list[str] | None) -> int``; ``tools/<job>.py`` scripts
call the same functions.
"""

from __future__ import annotations

import importlib
import sys

# command name -> (module in densessl.tools, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "make-synthetic": ("make_synthetic_davis", "generate a synthetic DAVIS-style video set"),
    "eval-results": ("eval_davis", "score a folder of DAVIS result PNGs (official J&F)"),
    "propagate": ("propagate", "propagate first-frame masks with a backbone's features"),
    "eval-davis": ("eval_model", "propagate with a backbone, then score (one command)"),
    "compute-flow": ("compute_flow", "compute and cache DIS optical flow for DAVIS-style videos"),
    "train-crw": ("train_crw", "train a contrastive random walk model on video"),
    "train-motion-vos": ("train_motion_vos", "train a CIS motion segmentation model on cached flow"),
    "eval-motion-vos": ("eval_motion_vos", "segment moving objects from flow and score (DAVIS-2016 unsupervised)"),
    "compare-runs": ("compare_runs", "plot the logged curves of several training runs together"),
    "demo": ("demo", "the end-to-end demo on synthetic data"),
    "build-ops": ("build_ops", "compile the CUDA correlation kernels now (else on first use)"),
}


def _usage() -> str:
    lines = ["usage: densessl <command> [args]", "", "commands:"]
    width = max(len(name) for name in COMMANDS)
    for name, (_, help_text) in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {help_text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, COMMANDS, n=3)
        hint = f" (did you mean: {', '.join(close)}?)" if close else ""
        print(f"densessl: unknown command '{command}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"densessl.tools.{COMMANDS[command][0]}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
