"""The commands that read a layout and write something for the hardware flow: ``inspect``,
``export-onnx``, ``program`` and ``diff``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from neftc.errors import NeftcError


def add_parser(sub: argparse._SubParsersAction) -> None:
    insp = sub.add_parser("inspect", help="summarise a layout directory",
                          description="Validate a layout (schema, checksums, tiles and graph "
                          "structure; with --full also the graph's value bounds, which loads "
                          "torch and takes a few seconds) and print per "
                          "layer: name, op, matrix rows x cols, bits, slices, tiles, arrays; the "
                          "totals; what stays digital, counted per op kind (activation x "
                          "activation matmuls, embeddings, layer norms, softmax, ...); and the "
                          "weights tied between crossbar layers (programmed once per layer).")
    insp.add_argument("layout", type=Path)
    insp.add_argument("--json", action="store_true", help="print as JSON")
    insp.add_argument("--full", action="store_true",
                      help="also propagate the graph's shapes to check its value bounds, as "
                      "every command that runs the layout (verify, export-onnx, ...) does")
    insp.set_defaults(run=run_inspect)

    onx = sub.add_parser("export-onnx", help="write a layout's deployed network as ONNX",
                         description="Write the deployed network of a layout (dequantised "
                         "weights q*scale, the digital ops) as a standard ONNX model (opset 17) "
                         "that passes onnx.checker.")
    onx.add_argument("layout", type=Path)
    onx.add_argument("-o", "--output", type=Path, required=True, help="model file (.onnx)")
    onx.set_defaults(run=run_export_onnx)

    prog = sub.add_parser("program", help="write programming files (target level per cell)",
                          description="Write, per physical array, the target level of every "
                          "cell by (row, column) with the conductance levels and the write-verify "
                          "tolerance: arrays.npz and/or one CSV per array, plus manifest.json "
                          "(see docs/programming.md).")
    prog.add_argument("layout", type=Path)
    prog.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    prog.add_argument("--format", choices=["npz", "csv", "both"], default="both")
    prog.set_defaults(run=run_program)

    dif = sub.add_parser("diff", help="cells whose level changes between two layouts",
                         description="Compare two layouts of the same model (e.g. before and "
                         "after a re-fine-tune) cell by cell: count of changed cells per layer "
                         "and array, and the estimated re-programming energy.")
    dif.add_argument("old", type=Path)
    dif.add_argument("new", type=Path)
    dif.add_argument("--cells", action="store_true", help="list the changed cells")
    dif.add_argument("--cells-limit", type=int, default=1_000_000, metavar="N",
                     help="list at most N changed cells (default 1,000,000); the output says "
                     "when the list is truncated")
    dif.add_argument("--json", action="store_true")
    dif.set_defaults(run=run_diff)


def run_inspect(args: argparse.Namespace) -> int:
    from neftc.flow.summary import format_summary, layout_summary
    from neftc.format.reader import load_layout, read_layout_doc

    doc = load_layout(args.layout).doc if args.full else read_layout_doc(args.layout)
    summary = layout_summary(doc)
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(format_summary(summary), end="")
    print("checked: schema, checksums, tiles, graph structure" + (
        " and value bounds" if args.full else "; the graph's value bounds are checked by "
        "the commands that run it, or here with --full"))
    return 0


def run_export_onnx(args: argparse.Namespace) -> int:
    from neftc.flow.onnx_export import export_onnx
    from neftc.format.reader import load_layout

    model = export_onnx(load_layout(args.layout), args.output)
    print(f"wrote {args.output}: {len(model.graph.node)} ONNX nodes, opset "
          f"{model.opset_import[0].version}, {len(model.graph.initializer)} initializers")
    return 0


def run_program(args: argparse.Namespace) -> int:
    from neftc.flow.programming import write_programming_files
    from neftc.format.reader import load_layout

    formats = ("npz", "csv") if args.format == "both" else (args.format,)
    manifest = write_programming_files(load_layout(args.layout), args.output, formats)
    cells = sum(a["programmed_cells"] for a in manifest["arrays"])
    print(f"wrote {args.output}/: {len(manifest['arrays'])} arrays, {cells:,} programmed cells "
          f"({', '.join(formats)}), write-verify tolerance "
          f"+-{manifest['write_verify_tolerance_us']:.3g} uS")
    calibration = manifest["dac_calibration"]
    if calibration is not None:
        print(f"input DACs: {len(manifest['dac'])} layers, ranges from {calibration['data']} "
              f"({calibration['samples']} samples, {calibration['method']}) in dac.csv")
    else:
        print(f"note: layout {args.layout} has no DAC calibration, so the programming files "
              "hold no input DAC ranges; store the ones sign-off uses with 'neftc calibrate "
              f"{args.layout} --data DATA' and run 'neftc program' again")
    return 0


def run_diff(args: argparse.Namespace) -> int:
    from neftc.flow.programming import diff_layouts
    from neftc.format.reader import load_layout

    if args.cells_limit < 0:
        raise NeftcError(f"--cells-limit must be >= 0, got {args.cells_limit}")
    result = diff_layouts(load_layout(args.old), load_layout(args.new),
                          keep_cells=args.cells_limit if args.cells else 0)
    if args.json:
        print(json.dumps(result.as_dict(args.cells), indent=1))
        return 0
    print(f"{result.changed_cells:,} of {result.compared_cells:,} programmed cells change level; "
          f"estimated re-programming energy {result.energy_pj / 1e6:.3g} uJ")
    for layer, count in result.per_layer.items():
        if count:
            print(f"  {layer}: {count:,} cells")
    if args.cells:
        if result.cells_truncated:
            print(result.truncation_note())
        print("core,array,row,col,old,new")
        for cell in result.cells:
            print(",".join(str(v) for v in cell))
    return 0
