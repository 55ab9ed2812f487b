from glob import glob

from setuptools import find_packages, setup

package_name = "sac_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.json")),
        ("share/" + package_name + "/launch", glob("launch/*.py")),
    ],
    python_requires=">=3.10",
    install_requires=[
        "setuptools",
        "numpy",
        "scipy",
        "av>=14",
        "pillow",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "onnxruntime",
        "onnx",
        "onnxconverter-common",  # FP16 ONNX for strongly typed TensorRT engines
        "rosbags>=0.10",  # ROS 2 bags (MCAP / sqlite3) without rosbag2: sac bag, sac report
        "mcap",  # independent MCAP reader, used by the bag tests
        "mcap-ros2-support",
        "foxglove-sdk>=0.30",  # sac view: the live Foxglove WebSocket server
    ],
    # the default segmentation model and the hand-labelled evaluation set ship in the package
    package_data={"sac_ros.segmentation": ["models/*.onnx", "data/evalset/*.json"]},
    extras_require={"test": ["pytest", "ruff", "websockets", "protobuf"],
                    # training / PyTorch backend (TensorRT: pip install tensorrt pycuda)
                    "train": ["torch", "cityscapesscripts"]},
    zip_safe=False,  # the model and labels are read from the package folder
    maintainer="sac_ros maintainers",
    maintainer_email="sac-ros@example.org",
    description="Semantic-aware dual-CRF compression of automotive camera video for ROS 2",
    license="MIT",
    entry_points={
        "console_scripts": [
            "sac = sac_ros.cli.main:main",
            "sac_sensor = sac_ros.nodes.sensor:main",
            "sac_ecu = sac_ros.nodes.ecu:main",
            "sac_perception = sac_ros.nodes.perception:main",
            "sac_video_source = sac_ros.nodes.video_source:main",
            "sac_view = sac_ros.nodes.view:main",
        ],
    },
)
