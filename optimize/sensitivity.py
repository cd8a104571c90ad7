"""Rank layers by how much accuracy their quantization costs, on calibration data.

For every tensor, onnxruntime's qdq_loss_debug gives the signal-to-quantization-noise ratio
(SQNR, dB) between the float model's activation and the quantized model's. A node's
sensitivity is the SQNR it loses: SQNR of its input minus SQNR of its output. The nodes that
lose the most are the first to keep in float.
"""

from __future__ import annotations

from pathlib import Path

from optimize.calibration import ImageSet, OrtCalibrationReader
from optimize.quiet import quiet

QUANTIZABLE = {"Conv", "Gemm", "MatMul", "Add", "Mul", "Concat", "AveragePool", "MaxPool",
               "GlobalAveragePool", "Clip", "Relu", "Resize", "ConvTranspose", "Sigmoid"}
INPUT_SQNR = 100.0  # for a model input the QDQ graph does not quantize: exact in both


def rank_nodes(float_path: Path, qdq_path: Path, images: ImageSet, input_name: str,
               workdir: Path, limit: int = 16) -> list[tuple[str, float]]:
    """(node name in the float graph, dB lost), most sensitive first."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        modify_model_output_intermediate_tensors,
    )

    subset = ImageSet(images.folder, images.names[:limit], images.tensors[:limit],
                      images.brightness[:limit])
    aug_float, aug_qdq = workdir / "sens_float.onnx", workdir / "sens_qdq.onnx"
    with quiet():
        modify_model_output_intermediate_tensors(str(float_path), str(aug_float))
        modify_model_output_intermediate_tensors(str(qdq_path), str(aug_qdq))
        float_acts = collect_activations(str(aug_float), OrtCalibrationReader(subset, input_name))
        qdq_acts = collect_activations(str(aug_qdq), OrtCalibrationReader(subset, input_name))
    # SQNR of every float tensor against what the QDQ model computes for it: its Q/DQ'd value
    # where it has one, else the tensor of the same name (model outputs, which stay float).
    graph = onnx.load(str(float_path)).graph
    sqnr = {}
    for name, value in float_acts.items():
        seen = qdq_acts.get(name + "_DequantizeLinear_Output", qdq_acts.get(name))
        if seen is not None:
            sqnr[name] = compute_signal_to_quantization_noice_ratio(value, seen)
    for i in graph.input:
        sqnr.setdefault(i.name, INPUT_SQNR)
    # A node whose output the QDQ graph fused away (Conv -> Relu) is charged with the loss
    # measured at the end of its chain, under its own name: that is the node to exclude.
    ranking, carried = [], {}
    for node in graph.node:
        inputs = [sqnr[i] if i in sqnr else carried[i][1] for i in node.input
                  if i in sqnr or i in carried]
        owner = next((carried[i][0] for i in node.input if i in carried), None)
        if not inputs or (owner is None and node.op_type not in QUANTIZABLE):
            continue
        if node.output[0] not in sqnr:
            carried[node.output[0]] = (owner or node.name, min(inputs))
            continue
        ranking.append((owner or node.name, min(inputs) - sqnr[node.output[0]]))
    ranking.sort(key=lambda item: item[1], reverse=True)
    for path in (aug_float, aug_qdq):
        path.unlink(missing_ok=True)
    return ranking
