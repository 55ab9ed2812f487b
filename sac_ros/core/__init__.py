"""ROS-free core of sac_ros: class maps, masks, codec, recombination, metrics.

Nothing in this package imports rclpy; nodes, CLI tools and benchmarks share it.
"""

from sac_ros.core.errors import SacError

__all__ = ["SacError"]
