"""Flowstate Bridge: a local daemon that runs AI audio engines beside a DAW."""

import os

__version__ = "0.1.0"

# OpenMP threads that finish their share of an op spin, waiting for the next one, by default. Beside
# a DAW (or any busy program) a spinning torch thread and a thread that needs its core take turns,
# and a window that should take 1 s takes 4-6: the released htdemucs architecture's 1.02 s window
# on 2 threads measured 4.1-5.7 s spinning against 0.8-1.0 s passive, with one other busy process
# on a 2-core machine; a tiny model's 100 training steps 136 s against 37 s. Passive waiting is read
# once, when torch loads its OpenMP runtime, so it is set here, before anything imports torch; an
# OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
