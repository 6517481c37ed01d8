"""Validation of the operator model against public measurements (results/validation/).

files.py     read and check the validation files (kinds, splits, devices, sources; what each file times)
lsq.py       the small least-squares solvers the calibration uses (Levenberg-Marquardt, robust NNLS)
fit.py       calibration: fit the free constants per GPU on `split = "calibration"` files only
predict.py   predict every operator row (dense layers summed from their ops, GEMM, attention, collectives)
e2e.py       end-to-end rows the simulator can predict (decode TPOT at fixed concurrency)
figures.py   error figures (median, p90, worst) per set, kind and GPU; the committed figures and the gate
rows.py      measured and modeled rows of a results run (so `compare` and the report can read them)
text.py      the tables `lamina-bench validate` prints
vidur.py     import Vidur's profiling CSVs as a lamina-bench profile
"""
