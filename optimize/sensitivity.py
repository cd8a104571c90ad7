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
INPUT_SQNR = 100.0  # the model input is exact in both models


def rank_nodes(float_path: Path, qdq_path: Path, images: ImageSet, input_name: str,
               workdir: Path, limit: int = 16) -> list[tuple[str, float]]:
    """(node name in the float graph, dB lost), most sensitive first."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
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
        errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    sqnr = {name: err["xmodel_err"] for name, err in errors.items() if "xmodel_err" in err}
    graph = onnx.load(str(float_path)).graph
    sqnr.update({i.name: INPUT_SQNR for i in graph.input})
    ranking = []
    for node in graph.node:
        if node.op_type not in QUANTIZABLE or node.output[0] not in sqnr:
            continue
        inputs = [sqnr[i] for i in node.input if i in sqnr]
        if inputs:
            ranking.append((node.name, min(inputs) - sqnr[node.output[0]]))
    ranking.sort(key=lambda item: item[1], reverse=True)
    for path in (aug_float, aug_qdq):
        path.unlink(missing_ok=True)
    return ranking
