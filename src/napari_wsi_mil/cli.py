"""The ``wsi-mil`` command line. Each command parses arguments and drives a core job."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import Job, Progress, run_job


def drive(job: Job, desc: str, quiet: bool = False):
    """Run a job with a terminal progress bar (one bar per stage) and return its result."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def show(event: Progress) -> None:
        if quiet:
            return
        bar = bars.get(event.stage)
        if bar is None:
            for old in bars.values():
                old.close()
            bars.clear()
            bar = bars[event.stage] = tqdm(
                total=event.total,
                desc=f"{desc}: {event.stage}",
                unit="",
                dynamic_ncols=True,
                file=sys.stderr,
            )
        bar.total = event.total
        bar.n = event.done
        if event.message:
            bar.set_postfix_str(event.message, refresh=False)
        bar.refresh()

    try:
        return run_job(job, on_progress=show)
    finally:
        for bar in bars.values():
            bar.close()


def _cmd_info(args: argparse.Namespace) -> int:
    from napari_wsi_mil.slide import open_slide

    path = args.slide
    if args.sample:
        from napari_wsi_mil.slide.synthetic import sample_slide_path

        path = sample_slide_path()
    if path is None:
        raise WsiMilError("give a SLIDE path or --sample")
    with open_slide(path) as slide:
        info = slide.describe()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a slide: backend, levels, downsamples, MPP, vendor")
    p.add_argument("slide", nargs="?", help="slide file")
    p.add_argument("--sample", action="store_true", help="describe the built-in synthetic sample")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_info]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsi-mil",
        description="Weakly supervised learning on whole-slide images (napari-wsi-mil).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except WsiMilError as exc:
        print(f"wsi-mil {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wsi-mil {args.command}: interrupted; finished results are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
