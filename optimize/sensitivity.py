"""Rank layers by how much accuracy their quantization costs, on calibration data.

For every tensor, onnxruntime's qdq_loss_debug gives the signal-to-quantization-noise ratio
(SQNR, dB) between the float model's activation and the quantized model's. A node's
sensitivity is the SQNR it loses: SQNR of its input minus SQNR of its output. The nodes that
lose the most are the first to keep in float.
"""

from __future__ import annotations

from pathlib import Path

from optimize.calibration import ImageSet
from optimize.quiet import quiet

QUANTIZABLE = {"Conv", "Gemm", "MatMul", "Add", "Mul", "Concat", "AveragePool", "MaxPool",
               "GlobalAveragePool", "Clip", "Relu", "Resize", "ConvTranspose", "Sigmoid"}
INPUT_SQNR = 100.0  # for a model input the QDQ graph does not quantize: exact in both


def _streamed_sqnr(aug_float: Path, aug_qdq: Path, tensors, input_name: str) -> dict[str, float]:
    """SQNR (dB) of every float tensor against what the QDQ model computes for it: its Q/DQ'd
    value where it has one, else the tensor of the same name (model outputs, which stay float).

    Image by image, summing signal and noise power, so memory holds one image's activations of
    the two models, not all of them (a 640x640 detector's activations for 16 images took 7 GB).
    """
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.quantization.qdq_loss_debug import _TENSOR_SAVE_POSTFIX

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                for p in (aug_float, aug_qdq)]
    names = [[o.name for o in s.get_outputs()] for s in sessions]
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    for tensor in tensors:
        acts = [{n.removesuffix(_TENSOR_SAVE_POSTFIX): v for n, v in zip(ns, s.run(None, {
            input_name: tensor})) if n.endswith(_TENSOR_SAVE_POSTFIX)}
            for s, ns in zip(sessions, names)]
        for name, value in acts[0].items():
            seen = acts[1].get(name + "_DequantizeLinear_Output", acts[1].get(name))
            if seen is None or seen.shape != value.shape:
                continue
            x = value.astype(np.float64)
            signal[name] = signal.get(name, 0.0) + float(np.sum(x * x))
            noise[name] = noise.get(name, 0.0) + float(np.sum((x - seen) ** 2))
    eps = float(np.finfo(np.float32).eps) ** 2
    return {n: 10.0 * float(np.log10(max(signal[n], eps) / max(noise[n], eps))) for n in signal}


def rank_nodes(float_path: Path, qdq_path: Path, images: ImageSet, input_name: str,
               workdir: Path, limit: int = 16) -> list[tuple[str, float]]:
    """(node name in the float graph, dB lost), most sensitive first."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors

    aug_float, aug_qdq = workdir / "sens_float.onnx", workdir / "sens_qdq.onnx"
    with quiet():
        modify_model_output_intermediate_tensors(str(float_path), str(aug_float))
        modify_model_output_intermediate_tensors(str(qdq_path), str(aug_qdq))
    sqnr = _streamed_sqnr(aug_float, aug_qdq, images.tensors[:limit], input_name)
    graph = onnx.load(str(float_path)).graph
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
