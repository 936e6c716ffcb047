"""Converters: raw robot recordings into LeRobot datasets, and checkpoints between implementations."""
