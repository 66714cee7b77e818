"""``neftc targets``: the built-in target presets as a table, one target's fields with their
sources, or all of them as JSON."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    tg = sub.add_parser("targets", help="list the built-in targets",
                        description="List the built-in target presets, or print one (or all) "
                        "as JSON with every field and its source.")
    tg.add_argument("tag", nargs="?", help="show one target (a tag or a spec file), with --set")
    tg.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tg.add_argument("--json", action="store_true", help="print as JSON")
    tg.set_defaults(run=run_targets)


def run_targets(args: argparse.Namespace) -> int:
    from neftc.targets import builtin_targets, resolve_target

    if args.tag:
        spec = resolve_target(args.tag, args.overrides)
        print(json.dumps(spec.model_dump(mode="json"), indent=1) if args.json else
              _target_text(spec))
        return 0
    targets = builtin_targets()
    if args.json:
        print(json.dumps({tag: t.model_dump(mode="json") for tag, t in targets.items()}, indent=1))
        return 0
    width = max(len(tag) for tag in targets)
    print(f"{'tag':<{width}} {'array':>9} {'cell':>6} {'weight':>7} {'encoding':<12} {'s':>4} "
          f"{'sigma':>6} {'arrays':>7} {'effects':>7}  description")
    for tag, t in targets.items():
        effects = "on" if t.effects != type(t.effects)() else "off"
        print(f"{tag:<{width}} {t.array.rows:>4}x{t.array.cols:<4} {t.cell.bits:>4} b "
              f"{t.weight.bits:>5} b {t.weight.sign_encoding:<12} {t.noise.state_ratio:>4g} "
              f"{t.noise.sigma_rel:>6g} {t.chip.arrays:>7} {effects:>7}  {t.description}")
    print("\n'neftc targets TAG' shows every field with its source; --json prints all as JSON.")
    return 0


def _target_text(spec: object) -> str:
    from neftc.targets.spec import TargetSpec

    assert isinstance(spec, TargetSpec)
    data = spec.model_dump(mode="json")
    lines = [f"{spec.name}: {spec.description}"]
    for section, values in data.items():
        if not isinstance(values, dict) or section == "sources":
            continue
        for path, value in _leaves(values, section):
            source = spec.sources.get(path, "")
            lines.append(f"  {path:<36} {value!s:<14} {source}")
    return "\n".join(lines)


def _leaves(values: dict, prefix: str) -> list[tuple[str, object]]:
    """``(dotted path, value)`` of every field under ``prefix``, nested records flattened."""
    out: list[tuple[str, object]] = []
    for key, value in values.items():
        path = f"{prefix}.{key}"
        out.extend(_leaves(value, path) if isinstance(value, dict) else [(path, value)])
    return out
