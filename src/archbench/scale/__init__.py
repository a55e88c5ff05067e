"""Spreading a compare's grid of runs over several processes, GPUs or machines (Ray)."""
