"""ROS 2 bags without rosbag2: conversion (Cityscapes, KITTI-STEP, video), reading and
writing with rosbags (ROS-free), and play / record / run with rclpy (imported lazily)."""
