"""Evaluating policies: closed-loop rollouts in simulation, success statistics and reports."""
