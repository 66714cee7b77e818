"""The semantic checks of one crossbar layer record (docs/layout.md section 10): its weight shape
and convolution, its bias, its quantisation and slicing against the target and the encoding, and
its node."""

from __future__ import annotations

import math

from neftc.format import encoding
from neftc.format.consistency import Consistency
from neftc.format.schema import LayerRecord

_WEIGHT_DIMS = {"linear": 2, "conv1d": 3, "conv2d": 4}


def check_layer(ctx: Consistency, i: int, layer: LayerRecord) -> None:
    """The checks of one crossbar layer record (``layers[i]``), in the order of docs/layout.md
    section 10."""
    field = f"layers[{i}]"
    for check in (_check_weight_shape, _check_conv, _check_bias, _check_quant, _check_slicing,
                  _check_node):
        check(ctx, field, layer)


def _check_weight_shape(ctx: Consistency, field: str, layer: LayerRecord) -> None:
    """The weight shape: a conv record exactly for convolutions, and rows and columns that
    unroll it."""
    shape = layer.weight_shape
    if (layer.conv is None) != (layer.op == "linear"):
        raise ctx.fail(f"{field}.conv", f"a {layer.op} layer must "
                       f"{'not ' if layer.op == 'linear' else ''}have a conv record")
    if len(shape) != _WEIGHT_DIMS[layer.op] or min(shape) < 1:
        raise ctx.fail(f"{field}.weight_shape", f"{shape} is not the weight shape of a "
                       f"{layer.op} ({_WEIGHT_DIMS[layer.op]} dimensions, each >= 1)")
    if shape[0] != layer.matrix_cols:
        raise ctx.fail(f"{field}.weight_shape", f"{shape} has {shape[0]} output channels, "
                       f"but {field}.matrix_cols is {layer.matrix_cols}")
    if math.prod(shape[1:]) != layer.matrix_rows:
        raise ctx.fail(f"{field}.weight_shape", f"{shape} unrolls to "
                       f"{math.prod(shape[1:])} rows, but {field}.matrix_rows is "
                       f"{layer.matrix_rows}")


def _check_conv(ctx: Consistency, field: str, layer: LayerRecord) -> None:
    """A convolution's kernel, stride, padding, dilation and groups."""
    shape = layer.weight_shape
    if layer.conv is not None:
        conv, spatial = layer.conv, len(shape) - 2
        for name in ("kernel", "stride", "padding", "dilation"):
            values = getattr(conv, name)
            low = 0 if name == "padding" else 1
            if len(values) != spatial or min(values) < low:
                raise ctx.fail(f"{field}.conv.{name}", f"{values} must have {spatial} "
                               f"value(s), each >= {low}")
        if conv.kernel != shape[2:]:
            raise ctx.fail(f"{field}.conv.kernel", f"{conv.kernel} differs from the kernel "
                           f"{shape[2:]} of {field}.weight_shape")
        if layer.matrix_cols % conv.groups:
            raise ctx.fail(f"{field}.conv.groups", f"{conv.groups} groups do not divide "
                           f"the {layer.matrix_cols} output channels")


def _check_bias(ctx: Consistency, field: str, layer: LayerRecord) -> None:
    """The bias names a tensor of one value per output channel."""
    if layer.bias is not None:
        record = ctx.tensor_records.get(layer.bias)
        if record is None:
            raise ctx.fail(f"{field}.bias", f"names the tensor '{layer.bias}', which is not "
                           "in tensors")
        if record.shape != [layer.matrix_cols]:
            raise ctx.fail(f"{field}.bias", f"the tensor '{layer.bias}' has shape "
                           f"{record.shape}, not [{layer.matrix_cols}] (one per output "
                           "channel)")


def _check_quant(ctx: Consistency, field: str, layer: LayerRecord) -> None:
    """The quantisation matches the target's weight format; scales finite, > 0, one per column."""
    target = ctx.doc.target
    quant, slicing = layer.quant, layer.slicing
    if quant.bits != target.weight.bits:
        raise ctx.fail(f"{field}.quant.bits", f"{quant.bits}, but target.weight.bits is "
                       f"{target.weight.bits}")
    if slicing.encoding != target.weight.sign_encoding:
        raise ctx.fail(f"{field}.slicing.encoding", f"'{slicing.encoding}', but "
                       f"target.weight.sign_encoding is '{target.weight.sign_encoding}'")
    if quant.qmax != target.qmax:
        raise ctx.fail(f"{field}.quant.qmax", f"{quant.qmax}, but {quant.bits}-bit "
                       f"{slicing.encoding} weights have qmax {target.qmax}")
    if len(quant.scales) != layer.matrix_cols:
        raise ctx.fail(f"{field}.quant.scales", f"{len(quant.scales)} scales for "
                       f"{layer.matrix_cols} weight columns; there must be one per column")
    for k, scale in enumerate(quant.scales):
        if not (math.isfinite(scale) and scale > 0):
            raise ctx.fail(f"{field}.quant.scales[{k}]", f"the scale is {scale}; scales "
                           "must be finite and > 0")
    if not quant.per_channel and any(s != quant.scales[0] for s in quant.scales):
        k = next(k for k, s in enumerate(quant.scales) if s != quant.scales[0])
        raise ctx.fail(f"{field}.quant.scales[{k}]", f"{quant.scales[k]} differs from "
                       f"scales[0] = {quant.scales[0]}, but quant.per_channel is false "
                       "(one scale per layer)")


def _check_slicing(ctx: Consistency, field: str, layer: LayerRecord) -> None:
    """The slicing matches the target's cells and the one definition of the encoding."""
    target = ctx.doc.target
    quant, slicing = layer.quant, layer.slicing
    if slicing.cell_bits != target.cell.bits:
        raise ctx.fail(f"{field}.slicing.cell_bits", f"{slicing.cell_bits}, but "
                       f"target.cell.bits is {target.cell.bits}")
    slices = encoding.n_slices(quant.bits, slicing.cell_bits)
    if slicing.slices != slices:
        raise ctx.fail(f"{field}.slicing.slices", f"{slicing.slices}, but {quant.bits}-bit "
                       f"weights on {slicing.cell_bits}-bit cells take {slices} slices")
    polarities = encoding.n_polarities(slicing.encoding)
    if slicing.polarities != polarities:
        raise ctx.fail(f"{field}.slicing.polarities", f"{slicing.polarities}, but "
                       f"{slicing.encoding} encoding has {polarities}")
    offset = encoding.sign_offset(quant.bits, slicing.encoding)
    if slicing.offset != offset:
        raise ctx.fail(f"{field}.slicing.offset", f"{slicing.offset}, but "
                       f"{quant.bits}-bit {slicing.encoding} encoding has offset {offset}")


def _check_node(ctx: Consistency, field: str, layer: LayerRecord) -> None:
    """Enough output positions for the copies, and the crossbar node the layer names."""
    if layer.replication > layer.positions:
        raise ctx.fail(f"{field}.positions", f"{layer.positions} output position(s) per "
                       f"sample, fewer than the layer's {layer.replication} pipeline copies "
                       f"({field}.replication)")
    k = ctx.node_index.get(layer.node)
    node = ctx.doc.graph.nodes[k] if k is not None else None
    if node is None or node.op != "call_function" or node.layer != layer.name:
        what = ("no node of graph.nodes has that name" if node is None else
                f"graph.nodes[{k}] is a {node.op} node with layer {node.layer!r}")
        raise ctx.fail(f"{field}.node", f"'{layer.node}' must name the call_function node "
                       f"whose layer is '{layer.name}', but {what}")
