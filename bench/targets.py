"""The performance targets, read off bench/run.py's JSON: each target, what was measured, met.

    python bench/targets.py bench/results/full.json [--one-thread FILE.json] [--markdown FILE]
    python bench/targets.py bench/results/full.json --readme README.md   # README up to date?

Targets (medians of one run; ratios of medians measured in the same interleaved rounds):

- one ``update()`` of one small param (the 1-element cell), Adam and SGD: <= 1.0 us
- the book's TwoLayerNet, float64 Adam, fastopt on one thread: >= 5x the book's NumPy code
  (fastopt's 1-thread timing from the same run; or ``--one-thread``: a run with ``--threads 1``)
- the book's TwoLayerNet, every optimizer torch.optim has, both dtypes: >= 3x torch.optim
  (not Muon, whose update is matrix products through the same BLAS as torch's)
- 1e7 elements, every such optimizer and dtype, fastopt at its default threads: >= 1.0x
  torch.optim's fused kernels at the same threads, and >= 90% of the bandwidth probe
- 1e7 elements, every rule and dtype: the default threads (N > 1) take at most 1/1.6 of one
  thread's time; the book's TwoLayerNet: never slower than one thread, beyond 5% of noise
  (the run's ``scaling`` columns; not measured in a ``--threads 1`` or ``--no-scaling`` run)

The torch targets and ``against_torch`` read torch.optim's cells only (their peer's results
under ``torch``, ``speedup_vs_torch``); the rules torch.optim lacks are timed against
schedulefree's or timm's torch implementation (``speedup_vs_peer``, results under the package's
name), which bench/run.py reports and no target reads.

Prints one row per target with the worst cell and how many cells meet it, and the README's
figures as read off the run (``headline``, and ``against_torch`` when the run timed torch);
``--readme`` fails when README.md does not say them.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from typing import Any

Cell = dict[str, Any]


def _cells(data: dict[str, Any], workload: str, optimizers: tuple[str, ...] | None = None,
           dtypes: tuple[str, ...] = ("float32", "float64")) -> list[Cell]:
    return [cell for cell in data["cells"] if cell["workload"] == workload
            and cell["dtype"] in dtypes and (optimizers is None or cell["optimizer"] in optimizers)]


def _label(cell: Cell) -> str:
    return f"{cell['optimizer']} {cell['dtype']}"


def _target(name: str, cells: list[Cell], value: Callable[[Cell], float | None],
            bound: float, at_most: bool, show: Callable[[float], str]) -> list[str]:
    """[target, what was measured (the worst cell), verdict]; ``at_most``: the value must
    not exceed ``bound``, else it must reach it."""
    measured = [(v, cell) for v, cell in ((value(cell), cell) for cell in cells)
                if v is not None]
    if not measured:
        return [name, "not measured", "-"]
    meets = [v <= bound if at_most else v >= bound for v, _ in measured]
    worst_value, worst = (max if at_most else min)(measured, key=lambda item: item[0])
    verdict = "met" if all(meets) else "not met"
    if len(measured) == 1:
        return [name, f"{show(worst_value)} ({_label(worst)})", verdict]
    return [name, f"worst {show(worst_value)} ({_label(worst)}); {sum(meets)} of "
            f"{len(measured)} cells meet it", verdict]


BOOK_OPTIMIZERS = ("SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam")
BOOK_NETWORKS = ("two_layer_net", "five_layer_net")
# Rules whose update is mostly matrix products, through the same BLAS as torch's (Muon's
# Newton-Schulz iteration): the ">= 3x torch.optim" target, set for the loops fastopt
# compiles, does not apply to them.
MATRIX_RULES = ("Muon",)


def short_cpu(name: str) -> str:
    """The CPU as a reader knows it: ``AMD EPYC 7B13``, ``Intel Xeon Platinum 8481C``."""
    name = re.sub(r"\((R|TM|tm|r)\)", "", name)
    name = re.sub(r"\b(CPU|Processor|\d+-Core)\b", "", name)
    name = re.sub(r"@.*$", "", name)
    return " ".join(name.split()) or "an unnamed CPU"


def headline(data: dict[str, Any]) -> str | None:
    """The README's headline read off a run: the range of fastopt's speedups over the book's
    NumPy code on the book's networks (TwoLayerNet and the five-layer comparison net, the
    book's six optimizers, every dtype in the run), with the CPU and thread count.

    Returns None when the run has no such cell. The bounds are the lowest and highest ratio
    of medians, rounded to one decimal.
    """
    speedups = [cell["speedup_vs_numpy"]["fastopt"] for cell in data["cells"]
                if cell["workload"] in BOOK_NETWORKS and cell["optimizer"] in BOOK_OPTIMIZERS
                and "fastopt" in cell.get("speedup_vs_numpy", {})]
    if not speedups:
        return None
    machine = data.get("machine", {})
    threads = machine.get("threads", machine.get("fastopt_threads"))
    where = short_cpu(machine.get("cpu", ""))
    if threads is not None:
        where += f", {threads} thread{'s' if threads != 1 else ''}"
    return (f"{min(speedups):.1f}–{max(speedups):.1f}× faster than that code on the book's "
            f"networks ({where})")


def against_torch(data: dict[str, Any]) -> str | None:
    """The README's second figure read off a run: the range of fastopt's speedups over
    torch.optim on the cells of ``headline`` (the book's networks and six optimizers, every
    dtype in the run), each contender at the run's thread count.

    Returns None when the run timed no such cell against torch. The bounds are the lowest and
    highest ratio of medians, rounded to one decimal.
    """
    speedups = [cell["speedup_vs_torch"]["fastopt"] for cell in data["cells"]
                if cell["workload"] in BOOK_NETWORKS and cell["optimizer"] in BOOK_OPTIMIZERS
                and "fastopt" in cell.get("speedup_vs_torch", {})]
    if not speedups:
        return None
    return (f"{min(speedups):.1f}–{max(speedups):.1f}× faster than torch.optim on the same "
            f"networks")


def readme_says(readme: str, summary: str) -> bool:
    """Whether ``readme`` carries the headline ``summary``, line breaks and spacing aside; the
    parenthesis may go on (``(AMD EPYC 7B13, 2 threads, [performance](#performance))``)."""
    return " ".join(summary.removesuffix(")").split()) in " ".join(readme.split())


def rows(data: dict[str, Any], one_thread: dict[str, Any] | None) -> list[list[str]]:
    torch_names = tuple(sorted({cell["optimizer"] for cell in data["cells"]
                                if "torch" in cell["results"]}))
    compiled = tuple(name for name in torch_names if name not in MATRIX_RULES)

    def median(name: str) -> Callable[[Cell], float | None]:
        return lambda cell: cell["results"].get(name, {}).get("median_us")

    def over(key: str, contender: str = "fastopt") -> Callable[[Cell], float | None]:
        return lambda cell: cell.get(key, {}).get(contender)

    adam_net = _cells(one_thread or data, "two_layer_net", ("Adam",), ("float64",))
    if one_thread is None and any("fastopt" in cell.get("one_thread", {}) for cell in adam_net):
        # the run timed fastopt on 1 thread too; the book's code runs no threads of its own
        adam_net = [{**cell, "speedup_vs_numpy": {"fastopt": cell["results"]["numpy"][
            "median_us"] / cell["one_thread"]["fastopt"]["median_us"]}} for cell in adam_net]
    return [
        _target("one update of 1 small param (1 element), Adam and SGD: <= 1.0 us",
                _cells(data, "1", ("Adam", "SGD")), median("fastopt"), 1.0, True,
                lambda v: f"{v:.2f} us"),
        _target("TwoLayerNet float64 Adam, one thread: >= 5x the book's NumPy code",
                adam_net, over("speedup_vs_numpy"), 5.0, False, lambda v: f"{v:.2f}x"),
        _target("TwoLayerNet, every optimizer and dtype: >= 3x torch.optim",
                _cells(data, "two_layer_net", compiled), over("speedup_vs_torch"), 3.0,
                False, lambda v: f"{v:.2f}x"),
        _target("1e7, default threads: >= 1.0x torch's fused kernels",
                _cells(data, "1e7", torch_names), over("speedup_vs_torch"), 1.0, False,
                lambda v: f"{v:.2f}x"),
        _target("1e7, default threads: >= 90% of the bandwidth probe",
                _cells(data, "1e7"), over("fraction_of_probe"), 0.9, False,
                lambda v: f"{v:.0%}"),
        _target("1e7, every rule and dtype: default threads in <= 1/1.6 of one thread's time",
                _cells(data, "1e7"), over("scaling"), 1.6, False, lambda v: f"{v:.2f}x"),
        _target("TwoLayerNet, every rule and dtype: default threads >= 0.95x one thread's speed",
                _cells(data, "two_layer_net"), over("scaling"), 0.95, False,
                lambda v: f"{v:.2f}x"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", help="bench/run.py --json output")
    parser.add_argument("--one-thread", metavar="FILE", help="a --threads 1 run's JSON")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    parser.add_argument("--readme", metavar="README.md",
                        help="exit with status 1 unless this file carries the run's headline")
    args = parser.parse_args()
    with open(args.json) as file:
        data = json.load(file)
    one_thread = None
    if args.one_thread:
        with open(args.one_thread) as file:
            one_thread = json.load(file)
    table = rows(data, one_thread)
    machine = data.get("machine", {})
    print(f"targets from {args.json}: {machine.get('cpu', '?')}, measured "
          f"{machine.get('date_utc', '?')} UTC, fastopt on {machine.get('fastopt_threads', '?')} "
          f"thread(s), torch on {machine.get('torch_threads', '?')}")
    for name, measured, verdict in table:
        print(f"  {verdict:8} {name}: {measured}")
    summary = headline(data)
    torch_summary = against_torch(data)
    print(f"headline: {summary or 'no cell of the book networks in this run'}")
    print(f"against torch: {torch_summary or 'no cell of the book networks timed with torch'}")
    if args.markdown:
        with open(args.markdown, "w") as file:
            file.write("| target | measured | |\n|---|---|---|\n")
            for name, measured, verdict in table:
                file.write(f"| {name} | {measured} | {verdict} |\n")
    if args.readme:
        with open(args.readme) as file:
            readme = file.read()
        if summary is None or not readme_says(readme, summary):
            sys.exit(f"{args.readme} does not carry the headline of {args.json}: "
                     f"expected \"{summary}\"")
        if torch_summary is not None and not readme_says(readme, torch_summary):
            sys.exit(f"{args.readme} does not carry the comparison with torch.optim of "
                     f"{args.json}: expected \"{torch_summary}\"")
        print(f"{args.readme} carries {'them' if torch_summary else 'it'}")


if __name__ == "__main__":
    main()
