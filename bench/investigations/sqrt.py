"""The software float64 square root against the hardware instruction, on this machine.

    python bench/investigations/sqrt.py [--budget 1.0]

Needs the AVX-512 build. For each float64 optimizer whose loop divides by a square root,
one process updates the book's TwoLayerNet (784x50, 50, 50x10, 10) and a 1e6 array with
the hardware root and with fastopt's exactly rounded software one, switching between the two
every call (``set_soft_sqrt``), and prints median us per update and hardware/software (above
1: the software root is faster). It first checks that both give the same bits. Also printed:
the CPU's identity (the key of fastopt's table of measured CPUs, ``SQRT_TABLE`` in
fastopt/_simd.py), the method this process uses and why (``sqrt_reason``), and what the
measurement for a CPU outside the table gives here (the book's Adam loop on 4096 cached
elements, the median ratio of ``SQRT_ROUNDS`` interleaved rounds). Run it on an idle machine
to add a CPU to the table.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from functools import partial
from pathlib import Path

import numpy as np

import fastopt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/: _common.py
from _common import TWO_LAYER_NET, alternating, cpu_model

WORKLOADS = {"two_layer_net": TWO_LAYER_NET, "1e6": [(10**6,)]}
OPTIMIZERS = [("AdaGrad", {}), ("RMSprop", {}), ("RMSprop", {"centered": True}),
              ("Adam", {}), ("Adam", {"amsgrad": True}), ("Adam", {"paper_form": True}),
              ("AdamW", {}), ("NAdam", {}), ("RAdam", {}), ("Adadelta", {})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per cell")
    args = parser.parse_args()
    if "avx512" not in fastopt.simd_levels() or fastopt.simd_level() != "avx512":
        raise SystemExit("bench/investigations/sqrt.py needs the AVX-512 build running "
                         "(FASTOPT_SIMD unset)")
    kernels = importlib.import_module("fastopt._kernels_avx512")
    chosen = fastopt.sqrt_method()
    simd = fastopt._simd
    cpu = simd.cpu_identity()
    ratio = simd.measure_sqrt(lambda: kernels.time_soft_sqrt(simd.SQRT_RUNS))
    print(f"fastopt {fastopt.__version__} on {cpu_model()}, 1 thread")
    print(f"CPU identity: vendor {cpu.vendor!r}, family {cpu.family}, model {cpu.model}, "
          f"name {cpu.name!r}")
    print(f"this process uses the {chosen} square root: {simd.sqrt_reason()}")
    print(f"measurement for CPUs outside the table (book's Adam, 4096 cached float64, median "
          f"of {simd.SQRT_ROUNDS} rounds): hardware/software {ratio:.2f} (software from "
          f"{simd.SOFT_SQRT_GAIN})")
    print(f"{'optimizer':26} {'workload':14} {'hardware us':>12} {'software us':>12} "
          f"{'hw/sw':>6}")
    default_threads = fastopt.get_num_threads()
    fastopt.set_num_threads(1)
    try:
        for name, options in OPTIMIZERS:
            for workload, shapes in WORKLOADS.items():
                rng = np.random.default_rng(0)
                params = {f"p{i}": rng.standard_normal(s) for i, s in enumerate(shapes)}
                grads = {k: rng.standard_normal(v.shape) * 1e-3 for k, v in params.items()}
                twins = {k: v.copy() for k, v in params.items()}
                optimizers = {soft: getattr(fastopt, name)(**options) for soft in (False, True)}
                arrays = {False: params, True: twins}
                for _ in range(7):   # past RAdam's unrectified steps; the bits must agree
                    for soft in (False, True):
                        kernels.set_soft_sqrt(soft)
                        optimizers[soft].update(arrays[soft], grads)
                for key in params:
                    assert params[key].tobytes() == twins[key].tobytes(), (name, key)
                steps = {soft: partial(optimizers[soft].update, arrays[soft], grads)
                         for soft in (False, True)}
                median = alternating(steps, args.budget, before=kernels.set_soft_sqrt)
                hw, sw = (median[soft] * 1e6 for soft in (False, True))
                label = name + "".join(f" {k}={v}" for k, v in options.items())
                print(f"{label:26} {workload:14} {hw:12.2f} {sw:12.2f} {hw / sw:6.2f}",
                      flush=True)
    finally:
        kernels.set_soft_sqrt(chosen == "software")
        fastopt.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
