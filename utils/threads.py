"""OpenMP's wait policy for the scripts, set before torch loads (libgomp reads it once, when it loads).

By default OpenMP threads spin while they wait for each other. On a machine where other processes use
the cores, a spinning thread holds a core its partner needs, and a two-thread step collapses: measured on
2 cores with other training beside it, a narrow Jin step (batch 8, 40x40) took 21-43 s with the default
policy, 1.3-2.2 s with PASSIVE and 1.2-1.5 s with one thread. PASSIVE costs little on an idle machine.
Every script imports this module before torch; a value the user set in the environment is kept.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
