"""GPU operator model: kernel-level time equations, their calibrated constants, and a decoder layer composed
from them.

hardware.py     the datasheet facts an equation reads (bandwidth, flops, links, SM count, L2 size)
cache.py        L2 residency of a benchmark that re-reads its operands (none in serving)
constants.py    one constant = value + provenance (measured-fit / spec / assumed / derived) + date
calibration.py  the committed calibration file (results/validation/calibration.json) and derived GPUs
gemm.py         GEMM/GEMV and elementwise kernels; execution modes (kernel, CUDA graph, eager)
attention.py    paged decode attention
collectives.py  all-reduce (ring / tree, LL / LL128 / Simple; vLLM custom all-reduce) and point-to-point links
layer.py        a decoder layer's dense part and the model head, composed from the kernels
"""
