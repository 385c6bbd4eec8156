"""serbench: how much a speech emotion recognition system leaks about its speakers, and how well
defenses stop it.

Importing serbench pins the instruction set of the numerical kernels (torch's own, oneDNN's and
MKL's) to AVX2 before any of them runs, unless the environment already chooses one. Those
libraries otherwise pick the widest kernels the CPU offers, and AVX-512 kernels round
differently: a RAVDESS entry made on one machine re-ran with other numbers on another (issue
27). AVX2 is what nearly every x86-64 CPU of the last decade has; on this project's machines the
pinned runs were byte-identical to unpinned ones. Thread counts are pinned by
:mod:`serbench.threads`; ``environment.json`` records both.
"""

import os as _os

#: The kernel pins (environment variable -> value) every run computes with.
KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}

for _key, _value in KERNELS.items():
    _os.environ.setdefault(_key, _value)
