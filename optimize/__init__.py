"""edge-opt: the offline toolchain (intake, prune, quantize, export, report)."""
