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

# The hub's client (huggingface_hub, which model downloads go through) adds usage details to every
# request unless told not to, and fetches a registry of "AI agent harnesses" from the hub once a day
# to name the program that runs it (`utils/_detect_agent.py`: "best-effort telemetry"). The daemon
# asks the hub for model files and nothing else. Read when huggingface_hub is imported, so set here;
# a value in the environment wins.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
