"""Offline evaluation of recorded runs (``sac report``) and the papers' experiment
(``sac reproduce``). ROS-free: bags are read with rosbags."""
