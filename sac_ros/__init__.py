"""sac_ros: semantic-aware compression of automotive camera video for ROS 2.

The algorithm lives in :mod:`sac_ros.core` and imports without rclpy.
"""

__version__ = "0.1.0"
