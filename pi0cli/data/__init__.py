"""Datasets for pi0: LeRobot v3 datasets (:mod:`pi0cli.data.lerobot`), batching and sharding
(:mod:`pi0cli.data.loader`), exact norm stats (:mod:`pi0cli.data.stats`), synthetic datasets for tests and
benchmarks (:mod:`pi0cli.data.synthetic`) and the safe dataset writer (:mod:`pi0cli.data.writer`).

Importing this package is cheap: lerobot, torch and pyarrow are imported only where they are used.
"""
