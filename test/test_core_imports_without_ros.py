"""sac_ros.core, sac_ros.eval and the CLI import in a Python where rclpy cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import sac_ros.core

CHECK = textwrap.dedent("""
    import importlib
    import importlib.abc
    import pkgutil
    import sys

    BLOCKED = ("rclpy", "rosidl_runtime_py", "rclpy_message_converter")

    ATTEMPTS = []

    class BlockRos(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                ATTEMPTS.append(name)
                raise ImportError(f"{name} is blocked for this test")
            return None

    sys.meta_path.insert(0, BlockRos())
    try:
        import rclpy  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the rclpy blocker does not work")
    ATTEMPTS.clear()

    import sac_ros.core
    names = sorted(m.name for m in pkgutil.iter_modules(sac_ros.core.__path__))
    for name in names:
        importlib.import_module(f"sac_ros.core.{name}")
    for name in ("sac_ros.config", "sac_ros.cli.main", "sac_ros.cli.eval_cmd"):
        importlib.import_module(name)
    import sac_ros.eval  # the offline experiments: ROS-free as well
    for info in pkgutil.iter_modules(sac_ros.eval.__path__):
        importlib.import_module(f"sac_ros.eval.{info.name}")
    from sac_ros.cli.main import build_parser
    build_parser()
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    assert "rclpy" not in sys.modules
    assert not ATTEMPTS, f"tried to import {ATTEMPTS}"  # not even a guarded import
    print("imported:", " ".join(names))
""")


def test_core_imports_without_rclpy():
    expected = sorted(p.stem for p in Path(sac_ros.core.__file__).parent.glob("*.py")
                      if p.stem != "__init__")
    assert {"codec", "mask", "metrics", "sac"} <= set(expected)
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    imported = result.stdout.split("imported:", 1)[1].split()
    assert imported == expected
