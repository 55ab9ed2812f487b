"""Thin rclpy adapters around sac_ros.core: parameters in, messages out."""
