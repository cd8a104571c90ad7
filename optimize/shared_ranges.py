"""One activation range for every tensor a Concat joins, so the runtime concatenates int8 data.

onnxruntime's static quantizer gives each tensor its own calibrated range, so the inputs of a
Concat arrive with different scales. OpenVINO's CPU plugin then requantizes every input to one
scale before it can concatenate in int8: an extra int8 kernel per input (YOLO11n: 25 of them,
in every C3k2 block and the SPPF). NNCF gives the tensors of a Concat one shared scale ("unified
scales") and the plugin runs the Concat as a plain copy. This does the same on the calibration
ranges: the inputs and output of each quantized Concat, and the tensors that onnxruntime
already quantizes like their input (Split, MaxPool, Resize, Reshape ...: one scale through
them), share the union of their ranges.

The price is resolution: a narrow input of a Concat is rounded on the wider range of the whole
group, as under NNCF. The accuracy guard still judges the result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _same_as_input() -> frozenset[str]:
    """Op types whose output onnxruntime's QDQ quantizer gives its input's scale (Reshape,
    Transpose, MaxPool, Resize, Slice, Split ...), read from its registry so the groups follow
    the installed quantizer."""
    from onnxruntime.quantization.operators.direct_q8 import QDQDirect8BitOp
    from onnxruntime.quantization.operators.split import QDQSplit
    from onnxruntime.quantization.registry import QDQRegistry

    return frozenset(op for op, quantizer in QDQRegistry.items()
                     if issubclass(quantizer, (QDQDirect8BitOp, QDQSplit)))


def share_concat_ranges(graph, ranges: Path, out: Path, float_nodes: set[str]) -> int:
    """Write `ranges` (onnxruntime's calibration cache) to `out` with one range per group of
    tensors joined by a quantized Concat; return how many tensors changed range."""
    from onnxruntime.quantization.calibrate import (
        TensorData,
        TensorsData,
        load_tensors_data,
        save_tensors_data,
    )

    data = load_tensors_data(ranges)
    groups = _groups(graph, {name for name, _ in data.items()}, float_nodes)
    changed = 0
    merged: dict[str, TensorData] = {}
    for members in groups:
        low = min(float(np.min(data[m].range_value[0])) for m in members)
        high = max(float(np.max(data[m].range_value[1])) for m in members)
        for m in members:
            lo, hi = data[m].range_value
            changed += bool(float(np.min(lo)) != low or float(np.max(hi)) != high)
            merged[m] = TensorData(lowest=np.array(low, np.float32),
                                   highest=np.array(high, np.float32))
    result = {name: merged.get(name, value) for name, value in data.items()}
    save_tensors_data(TensorsData(data.calibration_method, result), out)
    return changed


def _groups(graph, calibrated: set[str], float_nodes: set[str]) -> list[list[str]]:
    """Sets of calibrated tensors that must share one range (two or more members each)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(names: list[str]) -> None:
        names = [n for n in names if n in calibrated]
        for other in names[1:]:
            parent[find(other)] = find(names[0])

    joined: set[str] = set()
    for node in graph.node:
        if node.op_type == "Concat" and node.name not in float_nodes:
            members = [*node.input, *node.output]
            union(members)
            joined.update(members)
    same_as_input = _same_as_input()
    for node in graph.node:  # follow the scale onnxruntime passes through, both ways
        if node.op_type in same_as_input and node.name not in float_nodes and node.input:
            union([node.input[0], *node.output])
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)
    return [sorted(m) for m in groups.values() if len(m) > 1 and joined & set(m)]


# Ops whose int8 output is their int8 input rearranged: a Q/DQ pair after one of them, with the
# scale its inputs already carry, rounds nothing, but the plugin runs it as one more kernel.
REARRANGING = frozenset({"Concat", "Split", "MaxPool"})


def drop_requantization(path: Path) -> int:
    """Remove the Q/DQ pairs after Concat/Split/MaxPool whose scale and zero point equal those
    of every input's DQ (what `share_concat_ranges` makes); return how many were removed.

    NNCF's models carry no FakeQuantize there: OpenVINO moves the dequantization through these
    ops and runs them on int8 data. With a pair there, it requantized each tensor on its own.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}

    def params(node) -> tuple | None:
        """(scale, zero point) of a Q or DQ node with constant per-tensor parameters."""
        if len(node.input) < 3 or any(i not in constants for i in node.input[1:3]):
            return None
        scale, zero = constants[node.input[1]], constants[node.input[2]]
        if scale.size != 1:
            return None
        return float(scale), int(zero), zero.dtype.str

    removed = []
    for node in reversed(graph.node):  # consumers first: a chain (SPPF's pools) clears whole
        if node.op_type not in REARRANGING:
            continue
        data_inputs = node.input if node.op_type == "Concat" else node.input[:1]
        feeding = [producer.get(i) for i in data_inputs]
        if not feeding or any(f is None or f.op_type != "DequantizeLinear" for f in feeding):
            continue
        wanted = {params(f) for f in feeding}
        if len(wanted) != 1 or None in wanted:
            continue
        for out in node.output:
            readers = consumers.get(out, [])
            if out in outputs or len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
                continue
            q = readers[0]
            dqs = consumers.get(q.output[0], [])
            if params(q) not in wanted or not dqs or any(
                    d.op_type != "DequantizeLinear" or params(d) not in wanted
                    or d.output[0] in outputs for d in dqs):
                continue
            for dq in dqs:
                for reader in consumers.get(dq.output[0], []):
                    reader.input[:] = [out if i == dq.output[0] else i for i in reader.input]
            removed += [q, *dqs]
    for n in removed:
        graph.node.remove(n)
    if removed:
        onnx.save(model, str(path))
    return sum(n.op_type == "QuantizeLinear" for n in removed)
