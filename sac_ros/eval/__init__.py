"""Offline experiments on clips and datasets: no ROS, no printing; they return data.

``coder`` runs methods over a clip, ``quality`` is the one per-frame measurement,
``equal_bytes`` / ``rate`` / ``reproduce`` are the ``sac eval`` / ``sac eval
--target-mbps`` / ``sac reproduce`` experiments, ``tables`` and ``plots`` their output.
"""
