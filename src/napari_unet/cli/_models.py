"""``napari-unet models``: list the models that can be loaded."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from napari_unet.cli._common import add_command, json_dumps, one_line

_DESCRIPTION = (
    "List the built-in models and those in the user's model folder "
    "(NAPARI_UNET_MODELS, else the platform's user data folder), with their metadata."
)


def add_models(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``models`` sub-command to ``sub`` and return its parser."""
    p = add_command(sub, common, "models", "list the models that can be loaded", _DESCRIPTION)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _describe_entry(entry: Any) -> str:
    """Two lines on one model: name, origin, task, architecture and scores; its file."""
    summary = entry.summary()
    where = "built-in" if entry.builtin else "user"
    if entry.error is not None:
        return f"  {entry.name}  [{where}]  cannot be read: {one_line(entry.error)}"
    arch = summary.get("architecture") or {}
    classes = ", ".join(summary.get("class_names") or [])
    parts = [
        f"  {entry.name}  [{where}]",
        f"{summary.get('task')} ({classes})",
        f"{summary.get('in_channels')} input channel(s)",
        f"depth {arch.get('depth')}, {arch.get('base_channels')} base channels, "
        f"{arch.get('norm')} norm",
    ]
    metrics = summary.get("metrics") or {}
    if isinstance(metrics.get("ap_50"), int | float):
        parts.append(f"AP50 {metrics['ap_50']:.3f}")
    if summary.get("parent"):
        parts.append(f"from {summary['parent']}")
    if summary.get("created"):
        parts.append(f"created {summary['created']}")
    lines = ["  ".join(parts), f"      {entry.path}"]
    return "\n".join(lines)


def cmd_models(args: argparse.Namespace) -> int:
    """Run ``napari-unet models``; returns the exit code."""
    from napari_unet.core.config import DEFAULT_MODEL
    from napari_unet.core.network.registry import builtin_models_dir, list_models, user_models_dir

    entries = list_models()
    default_installed = any(e.name == DEFAULT_MODEL and e.error is None for e in entries)
    if args.json:
        report = {
            "builtin_dir": str(builtin_models_dir()),
            "user_dir": str(user_models_dir()),
            "default": DEFAULT_MODEL,
            "default_installed": default_installed,
            "models": [entry.summary() for entry in entries],
        }
        sys.stdout.write(json_dumps(report) + "\n")
        return 0
    lines = []
    for builtin, title, folder in (
        (True, "Built-in models", builtin_models_dir()),
        (False, "User models", user_models_dir()),
    ):
        group = [e for e in entries if e.builtin == builtin]
        lines.append(f"{title} ({folder}):" + ("" if group else " none"))
        lines.extend(_describe_entry(e) for e in group)
    if not default_installed:
        lines.append(
            f"The default model '{DEFAULT_MODEL}' is not installed in this version; "
            "pass --model PATH to predict."
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
