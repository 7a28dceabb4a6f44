import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).parent))


def pytest_collection_modifyitems(config, items):
    """Tests marked `slow` (long fuzz runs) are deselected unless PVDBG_SLOW=1 or `-m`
    names them: `PVDBG_SLOW=1 python -m pytest -m slow`."""
    import os
    if os.environ.get("PVDBG_SLOW") == "1" or "slow" in (config.getoption("markexpr") or ""):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]
