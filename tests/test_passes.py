"""Each pass: structure, numerics (with stated tolerances), a does-nothing case, idempotence."""

from __future__ import annotations

import operator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from neftc.errors import CapacityError, PassError, PassOrderError
from neftc.format.encoding import fold, sign_offset, slice_levels
from neftc.frontend.trace import trace_module, unexported
from neftc.ir.instruments import DumpGraphs
from neftc.ir.node_info import crossbar_nodes, get_info
from neftc.ir.pass_manager import PassContext, PassManager, check_order
from neftc.ir.weights import get_weight
from neftc.passes import BitSlice, MapTiles, Normalize, Place, Quantize
from neftc.passes.map_tiles import make_tiles
from neftc.targets import TargetSpec, resolve_target

aten = torch.ops.aten


def run(module: nn.Module, example: torch.Tensor, target: TargetSpec, passes: list):
    gm = trace_module(module, example)
    ctx = PassContext(target, example)
    return PassManager(passes).run(gm, ctx), ctx


def targets_of(gm: torch.fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


# ---------------------------------------------------------------- normalize


def test_normalize_lowers_to_canonical_aten(residual_cnn, cnn_input, fefet) -> None:
    gm, _ = run(residual_cnn, cnn_input, fefet, [Normalize()])
    ops = targets_of(gm)
    assert ops.count(aten.conv2d.default) == 3
    assert ops.count(aten.linear.default) == 1  # the functional F.linear head
    assert ops.count(aten.batch_norm.default) == 3  # BN stays digital by default
    assert aten.add.Tensor in ops and aten.max_pool2d.default in ops
    assert all(n.op in ("placeholder", "get_attr", "call_function", "output")
               for n in gm.graph.nodes)
    layers = [get_info(n).layer for n in crossbar_nodes(gm)]
    assert layers == ["stem.0", "block.0", "block.3", "head_w"]
    info = get_info(crossbar_nodes(gm)[1])
    assert (info.op, info.matrix_rows, info.matrix_cols) == ("conv2d", 16 * 3 * 3, 16)
    assert info.conv.padding == (1, 1) and info.conv.kernel == (3, 3)


def test_normalize_keeps_numerics(residual_cnn, cnn_input, fefet) -> None:
    gm, _ = run(residual_cnn, cnn_input, fefet, [Normalize()])
    # Same ops on the same float32 weights: only kernel-order rounding may differ.
    torch.testing.assert_close(gm(cnn_input), residual_cnn(cnn_input), rtol=1e-5, atol=1e-6)


def test_normalize_fold_bn(residual_cnn, cnn_input, fefet) -> None:
    gm, _ = run(residual_cnn, cnn_input, fefet, [Normalize(fold_bn=True)])
    assert aten.batch_norm.default not in targets_of(gm)
    # Folding changes float rounding of w * gamma / sqrt(var + eps): a few ulps of the outputs.
    torch.testing.assert_close(gm(cnn_input), residual_cnn(cnn_input), rtol=1e-4, atol=1e-5)


class MatmulModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.randn(12, 5))
        self.query = nn.Linear(12, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.query(x)
        scores = torch.matmul(q, x.transpose(-1, -2))  # dynamic: stays digital
        return torch.matmul(torch.softmax(scores, -1) @ x, self.proj)  # static: crossbar


def test_normalize_static_matmul_becomes_linear_dynamic_stays_digital(fefet) -> None:
    model = MatmulModel().eval()
    x = torch.randn(1, 4, 12)
    gm, _ = run(model, x, fefet, [Normalize()])
    infos = [get_info(n) for n in crossbar_nodes(gm)]
    assert [(i.layer, i.matrix_rows, i.matrix_cols) for i in infos] == [
        ("query", 12, 12), ("proj", 12, 5)]
    assert sum(t in (aten.matmul.default, aten.bmm.default) for t in targets_of(gm)) >= 1
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


class MatmulForms(nn.Module):
    """Every way a model multiplies by a static matrix, and two activation x activation ones."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 6) / 3)  # x @ w
        self.left = nn.Parameter(torch.randn(4, 4) / 3)  # left @ x
        self.batched = nn.Parameter(torch.randn(6, 6) / 3)  # bmm with a broadcast parameter
        self.fc_w = nn.Parameter(torch.randn(6, 6) / 3)  # addmm(bias, x, fc_w.t())
        self.fc_b = nn.Parameter(torch.randn(6) / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 4, 6]
        h = x @ self.w
        h = self.left @ h
        h = torch.bmm(h, self.batched.unsqueeze(0).expand(h.shape[0], 6, 6))
        flat = torch.addmm(self.fc_b, h.reshape(-1, 6), self.fc_w.t()).reshape(h.shape)
        scores = torch.bmm(flat, flat.transpose(1, 2))  # activation x activation
        return torch.softmax(scores, -1) @ flat  # activation x activation


def test_normalize_maps_every_static_matmul_form(fefet) -> None:
    """x @ W, W @ x, bmm with a broadcast W and addmm become crossbar linears (matrix rows =
    the contracted size); the two activation x activation products stay digital matmuls."""
    model = MatmulForms().eval()
    x = torch.randn(2, 4, 6)
    gm, _ = run(model, x, fefet, [Normalize()])
    infos = [get_info(n) for n in crossbar_nodes(gm)]
    assert [(i.layer, i.matrix_rows, i.matrix_cols) for i in infos] == [
        ("w", 6, 6), ("left", 4, 4), ("batched", 6, 6), ("fc_w", 6, 6)]
    targets = targets_of(gm)
    assert targets.count(aten.matmul.default) == 2
    assert not {aten.bmm.default, aten.mm.default, aten.addmm.default} & set(targets)
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


def test_normalize_decomposes_attention_and_makes_inplace_ops_functional(fefet) -> None:
    """scaled_dot_product_attention (causal, with a boolean mask) becomes its two digital
    matmuls and a softmax, equal to torch's; x += y becomes an add that later readers see."""

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(8, 24)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 5, 8]
            q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
            mask = torch.ones(5, 5, dtype=torch.bool).tril()
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out += F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return out.squeeze(1) + x

    model = Attention().eval()
    x = torch.randn(2, 5, 8)
    exported = unexported(torch.export.export(model, (x,)).module())  # keeps the add_
    assert aten.add_.Tensor in targets_of(exported)
    gm = PassManager([Normalize()]).run(exported, PassContext(fefet, x))
    targets = targets_of(gm)
    assert aten.scaled_dot_product_attention.default not in targets
    assert targets.count(aten.matmul.default) == 4 and targets.count(aten.softmax.int) == 2
    assert not [t for t in targets if isinstance(t, torch._ops.OpOverload)
                and t._schema.name.endswith("_")]  # no in-place op
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


def test_normalize_does_nothing_on_normalized_graph(residual_cnn, cnn_input, fefet) -> None:
    gm, ctx = run(residual_cnn, cnn_input, fefet, [Normalize()])
    text = str(gm.graph)
    result = Normalize().run(gm, ctx)
    assert not result.modified and str(result.gm.graph) == text


def test_normalize_digital_only_model_has_no_crossbar_nodes(fefet) -> None:
    model = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1)).eval()
    gm, _ = run(model, torch.randn(1, 2, 4, 4), fefet, [Normalize()])
    assert crossbar_nodes(gm) == []


# ---------------------------------------------------------------- quantize


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_within_half_step(residual_cnn, cnn_input, fefet, per_channel) -> None:
    original = {k: v.clone() for k, v in residual_cnn.state_dict().items()}
    gm, _ = run(residual_cnn, cnn_input, fefet, [Normalize(), Quantize(per_channel=per_channel)])
    for node in crossbar_nodes(gm):
        info = get_info(node)
        key = info.layer + ".weight" if info.layer != "head_w" else "head_w"
        w = original[key].reshape(info.matrix_cols, -1).t().numpy().astype(np.float64)
        q, scales = info.quant.q, info.quant.scales.astype(np.float64)
        assert np.abs(q).max() == 255  # max-abs calibration uses the full range, no more
        # |w - q s| <= s/2 (rounding), plus float32 slack of the scale itself.
        assert np.all(np.abs(w - q * scales) <= scales / 2 * (1 + 1e-5))
        if per_channel:
            assert np.all(np.abs(q).max(axis=0) == 255)
        else:
            assert np.unique(scales).size == 1
    # The user's model is never modified.
    for key, value in residual_cnn.state_dict().items():
        assert torch.equal(value, original[key])


def fake_quant_by_the_docs(w: np.ndarray, qmax: int) -> np.ndarray:
    """docs: ``scale = max|W| / qmax``, ``q = clamp(round(W / scale), -qmax, qmax)``, weight
    ``q * scale`` (per layer, max-abs), in float64 from the float32 weights."""
    w = w.astype(np.float64)
    scale = np.abs(w).max() / qmax
    return np.clip(np.round(w / scale), -qmax, qmax) * scale


def test_quantize_graph_computes_fake_quant(residual_cnn, cnn_input, fefet) -> None:
    """After quantize the graph's weights are ``q * scale``, and the graph computes with them."""
    original = {k: v.detach().clone() for k, v in residual_cnn.state_dict().items()}
    gm, _ = run(residual_cnn, cnn_input, fefet, [Normalize(), Quantize()])
    for node in crossbar_nodes(gm):
        info = get_info(node)
        key = info.layer + ".weight" if info.layer != "head_w" else "head_w"
        expected = fake_quant_by_the_docs(original[key].numpy(), fefet.qmax)
        got = get_weight(gm, node).detach().numpy().astype(np.float64)
        # The graph holds float32 weights: q * scale rounded to float32 (and the scale itself
        # computed in float32), so 1e-6 relative to max|W| covers it; a wrong level is off by
        # a whole step, 1 / 255 of max|W|.
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.abs(expected).max(),
                                   err_msg=info.layer)
        assert not np.array_equal(got, original[key].numpy())  # the weights really moved
    # The quantised graph is the float model with those weights: same ops, float32 rounding.
    fake = with_graph_weights(residual_cnn, gm)
    with torch.no_grad():
        torch.testing.assert_close(gm(cnn_input), fake(cnn_input), rtol=1e-5, atol=1e-5)


def with_graph_weights(model: nn.Module, gm: torch.fx.GraphModule) -> nn.Module:
    """A copy of ``model`` whose crossbar weights are the quantised graph's."""
    import copy

    fake = copy.deepcopy(model)
    params = dict(fake.named_parameters())
    with torch.no_grad():
        for node in crossbar_nodes(gm):
            layer = get_info(node).layer
            key = layer + ".weight" if layer != "head_w" else "head_w"
            params[key].copy_(get_weight(gm, node).reshape(params[key].shape))
    return fake.eval()


def test_quantize_idempotent(residual_cnn, cnn_input, fefet) -> None:
    gm, ctx = run(residual_cnn, cnn_input, fefet, [Normalize(), Quantize()])
    before = [get_info(n).quant.q.copy() for n in crossbar_nodes(gm)]
    result = Quantize().run(gm, ctx)
    assert not result.modified
    for node, q in zip(crossbar_nodes(result.gm), before):
        assert np.array_equal(get_info(node).quant.q, q)


def test_quantize_percentile_clips(fefet) -> None:
    model = nn.Linear(200, 100).eval()  # 20000 weights: the 99.99th percentile excludes one
    with torch.no_grad():
        model.weight[0, 0] = 100.0  # one outlier
    gm, _ = run(model, torch.randn(1, 200), fefet,
                [Normalize(), Quantize(calibration="percentile")])
    info = get_info(crossbar_nodes(gm)[0])
    assert info.quant.scales[0] < 100.0 / 255 / 10  # the outlier no longer sets the scale
    assert info.quant.q.max() == 255  # it is clipped to qmax


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=2, max_size=40),
       st.sampled_from([4, 6, 8]))
def test_quantize_property_error_bound(values, bits) -> None:
    target = resolve_target("fefet_128x128", [f"weight.bits={bits}"])
    model = nn.Linear(len(values), 1, bias=False).eval()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([values]))
    gm, _ = run(model, torch.randn(1, len(values)), target, [Normalize(), Quantize()])
    info = get_info(crossbar_nodes(gm)[0])
    w = np.asarray(values, dtype=np.float64)
    s = float(info.quant.scales[0])
    assert np.abs(info.quant.q).max() <= target.qmax
    assert np.all(np.abs(w - info.quant.q[:, 0] * s) <= s / 2 * (1 + 1e-5) + 1e-12)


# ---------------------------------------------------------------- bit-slice


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-255, 255), min_size=1, max_size=50), st.sampled_from([1, 2, 3, 4]))
def test_slice_property_round_trip_differential(values, cell_bits) -> None:
    q = np.asarray(values, dtype=np.int64)
    levels = slice_levels(q, 8, cell_bits, "differential")
    offset = sign_offset(8, "differential")
    assert levels.shape == (2, -(-8 // cell_bits), len(values))
    assert levels.max() < 2**cell_bits
    assert np.all((levels[0] == 0) | (levels[1] == 0))  # only one column of a pair is non-zero
    assert np.array_equal(fold(levels, cell_bits, offset), q)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-128, 127), min_size=1, max_size=50), st.sampled_from([1, 2, 4]))
def test_slice_property_round_trip_offset(values, cell_bits) -> None:
    q = np.asarray(values, dtype=np.int64)
    levels = slice_levels(q, 8, cell_bits, "offset")
    offset = sign_offset(8, "offset")
    assert offset == 128 and levels.shape[0] == 1
    assert np.array_equal(fold(levels, cell_bits, offset), q)


def test_slice_golden() -> None:
    # 201 = 0b11_00_10_01 -> slices (LSB first) 1, 2, 0, 3 on the positive column.
    levels = slice_levels(np.array([201, -6]), 8, 2, "differential")
    assert levels[:, :, 0].tolist() == [[1, 2, 0, 3], [0, 0, 0, 0]]
    assert levels[:, :, 1].tolist() == [[0, 0, 0, 0], [2, 1, 0, 0]]


def test_bit_slice_idempotent_and_requires_quant(residual_cnn, cnn_input, fefet) -> None:
    gm, ctx = run(residual_cnn, cnn_input, fefet, [Normalize(), Quantize(), BitSlice()])
    assert not BitSlice().run(gm, ctx).modified
    with pytest.raises(PassOrderError, match="requires quantized"):
        check_order([Normalize(), BitSlice()])


# ---------------------------------------------------------------- map-tiles and place


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 700), st.integers(1, 700), st.sampled_from([16, 64, 128, 256]),
       st.sampled_from([32, 128, 256]))
def test_tiles_property_exact_cover(rows, cols, array_rows, array_cols) -> None:
    tiles = make_tiles(rows, cols, array_rows, array_cols)
    covered = np.zeros((rows, cols), dtype=np.int32)
    for tile in tiles:
        assert 1 <= tile.row_count <= array_rows and 1 <= tile.col_count <= array_cols
        covered[tile.row_start:tile.row_start + tile.row_count,
                tile.col_start:tile.col_start + tile.col_count] += 1
    assert np.all(covered == 1)  # nothing lost, nothing overlapping
    assert len(tiles) == -(-rows // array_rows) * -(-cols // array_cols)


def test_map_tiles_golden(fefet) -> None:
    # 300 inputs x 20 outputs, 8 physical columns per weight column: 3 x 2 tiles of 128 x 128.
    model = nn.Linear(300, 20).eval()
    gm, ctx = run(model, torch.randn(1, 300), fefet,
                  [Normalize(), Quantize(), BitSlice(), MapTiles(),
                   Place(strategy="in-order", replicate=False)])
    tiles = get_info(crossbar_nodes(gm)[0]).tiles
    assert [(t.row_start, t.row_count, t.col_start, t.col_count) for t in tiles] == [
        (0, 128, 0, 128), (0, 128, 128, 32), (128, 128, 0, 128), (128, 128, 128, 32),
        (256, 44, 0, 128), (256, 44, 128, 32)]
    assert [(t.core, t.array) for t in tiles] == [(0, i) for i in range(6)]
    assert not MapTiles().run(gm, ctx).modified  # tiling is idempotent (placement kept)
    assert not Place(strategy="in-order", replicate=False).run(gm, ctx).modified


def test_place_refuses_model_too_large() -> None:
    small = resolve_target("fefet_128x128", ["chip.cores=1", "chip.arrays_per_core=4"])
    with pytest.raises(CapacityError, match=r"needs 6 arrays .* has 4"):
        run(nn.Linear(300, 20).eval(), torch.randn(1, 300), small,
            [Normalize(), Quantize(), BitSlice(), MapTiles(), Place()])


def test_place_spills_over_cores() -> None:
    target = resolve_target("fefet_128x128", ["chip.cores=4", "chip.arrays_per_core=4"])
    gm, _ = run(nn.Linear(300, 20).eval(), torch.randn(1, 300), target,
                [Normalize(), Quantize(), BitSlice(), MapTiles(),
                 Place(strategy="in-order", replicate=False)])
    placed = [(t.core, t.array) for t in get_info(crossbar_nodes(gm)[0]).tiles]
    assert placed == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]


# ---------------------------------------------------------------- pass manager


def test_pass_failure_names_pass_and_node(fefet) -> None:
    class Exploding:
        name = "exploding"
        requires = frozenset({"traced"})
        provides = frozenset()

        def run(self, gm, ctx):
            from neftc.ir.pass_manager import NodeError

            node = next(n for n in gm.graph.nodes if n.op == "call_module")
            raise NodeError(node, "cannot handle it")

    model = nn.Sequential(nn.Linear(3, 3)).eval()
    gm = trace_module(model, torch.randn(1, 3))
    with pytest.raises(PassError, match=r"pass 'exploding' failed at node '_0'.*cannot handle it"):
        PassManager([Exploding()]).run(gm, PassContext(fefet, torch.randn(1, 3)))


def test_dump_after_each(tmp_path, residual_cnn, cnn_input, fefet) -> None:
    gm = trace_module(residual_cnn, cnn_input)
    passes = [Normalize(), Quantize(), BitSlice(), MapTiles(), Place()]
    PassManager(passes, [DumpGraphs(tmp_path)]).run(gm, PassContext(fefet, cnn_input))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["00-input.txt", "01-normalize.txt", "02-quantize.txt", "03-bit-slice.txt",
                     "04-map-tiles.txt", "05-place.txt"]
    assert "aten.conv2d" in (tmp_path / "01-normalize.txt").read_text()
    assert "tiles=" in (tmp_path / "05-place.txt").read_text()


class SplitHalves(nn.Module):
    """``chunk`` lowers to a split op and ``operator.getitem`` nodes picking its outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return self.fc(a) + b[:, :3]


def test_getitem_is_a_permitted_graph_op(fefet) -> None:
    """Documented (passes/normalize.py): getitem is the one non-ATen call a graph may keep. It
    survives the whole default pipeline, and the compiled graph still computes the model."""
    model, x = SplitHalves().eval(), torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    gm, _ = run(model, x, fefet, [Normalize()])
    assert operator.getitem in targets_of(gm)
    torch.testing.assert_close(gm(x), model(x), rtol=1e-6, atol=1e-6)  # same ops, same weights
    gm, _ = run(model, x, fefet, [Normalize(), Quantize(), BitSlice(), MapTiles(), Place()])
    assert operator.getitem in targets_of(gm)
    assert [get_info(n).layer for n in crossbar_nodes(gm)] == ["fc"]


class ComputedBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 4))
        self.b = nn.Parameter(torch.randn(6))
        self.k = nn.Parameter(torch.randn(5, 4, 3, 3))
        self.kb = nn.Parameter(torch.randn(5))

    def forward(self, x: torch.Tensor, ) -> torch.Tensor:
        y = F.conv2d(x, self.k, self.kb * 2.0, padding=1)  # bias computed at run time
        return F.linear(y.mean(dim=(2, 3))[:, :4], self.w, torch.tanh(self.b))


def test_normalize_splits_computed_bias(fefet) -> None:
    model = ComputedBias().eval()
    x = torch.randn(2, 4, 5, 5)
    gm, _ = run(model, x, fefet, [Normalize()])
    for node in crossbar_nodes(gm):
        assert node.args[2] is None  # the computed bias became a digital add
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


def _placed(model, example, target, strategy, replicate):
    gm, _ = run(model, example, target, [Normalize(), Quantize(), BitSlice(), MapTiles(),
                                         Place(strategy=strategy, replicate=replicate)])
    return gm, [get_info(n) for n in crossbar_nodes(gm)]


@pytest.mark.parametrize("links", ["mesh", "all_to_all"])
def test_dataflow_placement_beats_in_order(links) -> None:
    from neftc.frontend.zoo import VGG8

    target = resolve_target("fefet_128x128", ["chip.cores=16", "chip.arrays_per_core=3",
                                              f"chip.core_links={links}"])
    model, x = VGG8((1, 8, 8), 10, width=8).eval(), torch.randn(1, 1, 8, 8)
    gm, infos = _placed(model, x, target, "dataflow", False)
    summary = gm.meta["neftc_placement"]
    assert summary.byte_hops < summary.in_order_byte_hops  # measured: about half
    gm_naive, _ = _placed(model, x, target, "in-order", False)
    assert gm_naive.meta["neftc_placement"].byte_hops == summary.in_order_byte_hops
    arrays = [(t.core, t.array) for info in infos for t in info.tiles]
    assert len(arrays) == len(set(arrays))  # every tile on exactly one array, one per array
    assert all(0 <= a < 3 and 0 <= c < 16 for c, a in arrays)


def test_replication_fills_only_free_arrays() -> None:
    from neftc.frontend.zoo import LeNet

    target = resolve_target("fefet_128x128", ["chip.cores=4", "chip.arrays_per_core=16"])
    _, infos = _placed(LeNet((1, 8, 8), 10).eval(), torch.randn(1, 1, 8, 8), target,
                       "dataflow", True)
    originals = [(t.core, t.array) for i in infos for t in i.tiles]
    copies = [r for i in infos for t in i.tiles for r in t.replicas]
    assert copies, "free arrays and a conv bottleneck: something must be replicated"
    everything = originals + copies
    assert len(everything) == len(set(everything)) <= 64  # no array holds two tiles
    # The first conv (64 positions per image) is the bottleneck and gets the most copies.
    replication = {i.layer: 1 + len(i.tiles[0].replicas) for i in infos}
    assert replication["features.0"] == max(replication.values()) > 1
    assert replication["classifier.5"] == 1  # one input vector: nothing to gain
