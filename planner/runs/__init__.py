"""Whole training runs: FLOPs, days, GPU-hours, money and energy (estimate), and choosing hardware
under money and time limits (budget)."""
