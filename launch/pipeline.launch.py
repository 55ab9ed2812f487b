"""Start the sac_ros pipeline: per camera, sensor -> ECU (-> perception).

    ros2 launch sac_ros pipeline.launch.py [config:=FILE] [input_topic:=TOPIC] [model:=PATH]
                                           [view:=true]

Reads the same config/pipeline.yaml as `sac pipeline` (the launch-free runner);
sac_ros.pipeline decides which nodes start for both.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from sac_ros.pipeline import TRANSPORTS_VAR, load_layout, pipeline_nodes
from sac_ros.shm import reclaim_dead_segments


def _nodes(context):
    # Before any node starts: the shared memory of nodes that were SIGKILLed earlier.
    reclaimed = reclaim_dead_segments()
    config = LaunchConfiguration("config").perform(context)
    layout = load_layout(config)
    actions = [LogInfo(msg=f"sac_ros: {reclaimed.summary()}")] if reclaimed.files else []
    if layout.fastdds_transports:
        actions.append(SetEnvironmentVariable(TRANSPORTS_VAR, layout.fastdds_transports))
    for spec in pipeline_nodes(layout,
                               input_topic=LaunchConfiguration("input_topic").perform(context),
                               model=LaunchConfiguration("model").perform(context),
                               view=_true(LaunchConfiguration("view").perform(context))):
        actions.append(Node(package="sac_ros", executable=spec.executable, name=spec.name,
                            namespace=spec.namespace, parameters=[config, spec.overrides],
                            output="screen"))
    return actions


def _true(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes")


def generate_launch_description():
    default_config = os.path.join(get_package_share_directory("sac_ros"), "config",
                                  "pipeline.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=default_config,
                              description="Pipeline parameter file (config/pipeline.yaml)."),
        DeclareLaunchArgument("input_topic", default_value="",
                              description="Camera Image topic; empty = the config's."),
        DeclareLaunchArgument("model", default_value="",
                              description="Segmentation model (default or a path); empty = "
                                          "the config's mask source."),
        DeclareLaunchArgument("view", default_value="false",
                              description="true = also start sac_view, the Foxglove live view "
                                          "of every camera (ws://127.0.0.1:8765)."),
        OpaqueFunction(function=_nodes),
    ])
