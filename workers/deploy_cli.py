"""`python -m workers check` and `python -m workers render`: the GPU-deployment commands (compose
and Kubernetes).

Both exit non-zero with every problem listed (model, worker and field named) and nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.config.models import load_models_config
from gateway.config.placement import placement_errors
from workers.compose import compose_errors
from workers.cpu_plan import REPO_ROOT
from workers.flags import flag_errors
from workers.k8s import k8s_errors
from workers.render import RERENDER, Deployment, leftover_files, render_all, stale_files


def _check(args: argparse.Namespace) -> int:
    config = load_models_config(args.config)
    problems = placement_errors(config, args.gpus) + compose_errors(config) + k8s_errors(config)
    problems += flag_errors(config)
    if problems:
        print(f"{args.config}: {len(problems)} placement problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    launched = [w for m in config.models for w in m.workers if w.launched]
    gpus = sorted(gpu for w in launched for gpu in w.gpus or [])
    print(
        f"{args.config}: OK: {len(config.models)} model(s), {len(launched)} launched worker(s) "
        f"on GPU(s) {', '.join(map(str, gpus)) or 'none'}"
    )
    return 0


def _render(args: argparse.Namespace) -> int:
    deployment = Deployment.load(args.config, args.root)
    if args.check:
        stale = stale_files(deployment, args.target)
        for path in stale:
            print(f"{path} differs from a fresh render; run: {RERENDER}", file=sys.stderr)
        return 1 if stale else 0
    rendered = render_all(deployment, args.target)
    for relative, text in rendered.items():
        (args.root / relative).parent.mkdir(parents=True, exist_ok=True)
        (args.root / relative).write_text(text, encoding="utf-8")
        print(f"wrote {relative}")
    if args.target != "compose":
        for relative in leftover_files(deployment, rendered):
            (args.root / relative).unlink()
            print(f"removed {relative} (no longer rendered)")
    return 0


def _gpu_count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def add_deploy_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], *, default_config: Path
) -> None:
    """Add `check` and `render` to the `python -m workers` sub-command parser `sub`."""
    check = sub.add_parser("check", help="validate GPU placement; non-zero exit on any problem")
    check.add_argument("--config", type=Path, default=default_config)
    check.add_argument(
        "--gpus", type=_gpu_count, help="the host's GPU count: every GPU id must be below it"
    )
    check.set_defaults(handler=_check)
    render = sub.add_parser(
        "render", help="write compose.gpu.yml, deploy/prometheus/..., deploy/k8s/..."
    )
    render.add_argument("--config", type=Path, default=default_config)
    render.add_argument("--root", type=Path, default=REPO_ROOT, help="where the generated files go")
    render.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is out of date"
    )
    render.add_argument(
        "--target",
        choices=["compose", "k8s", "all"],
        default="all",
        help="compose: compose.gpu.yml, Prometheus, alerts, dashboard; k8s: deploy/k8s/; "
        "all (default): both",
    )
    render.set_defaults(handler=_render)
