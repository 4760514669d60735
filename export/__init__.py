"""Export LightZoo models for phones: ONNX, ONNX Runtime Mobile (``.ort``), int8 -- each checked against PyTorch.

>>> import zoo
>>> import zoo.export as export
>>> model = zoo.create_model("mobilenetv3_small_050").eval()
>>> ex = export.to_onnx(model, "out/m.onnx", 224)                  # dynamo exporter, legacy on failure
>>> report = export.check_parity(model, ex.path, ex.spec)          # raises ExportError on mismatch
>>> q = export.quantize_int8(ex.path, "out/m.int8.onnx", ex.spec, calibration)   # (N, C, H, W) arrays
>>> conv = export.to_ort(ex.path)                                  # out/m.ort + m.required_operators.config
>>> export.export_model("mobilenetv3_small_050", "out", format="ort", int8=True)  # all of it, plus sidecars
>>> det = export.export_model(zoo.create_model("emov2_1m", task="detection", head="retinanet"), "out",
...                           task="detection", input_size=320)              # raw head outputs + anchors
>>> boxes = export.detection_postprocess(session.run(None, {"images": x}), sidecar["postprocess"])
>>> export.export_model("emov2_1m", "out", format="pte")     # ExecuTorch XNNPACK (extra: lightzoo[executorch])
>>> export.export_model("emov2_1m", "out", format="tflite")  # LiteRT via litert-torch (extra: lightzoo[tflite])

Graph interfaces per task are in :mod:`zoo.export.spec`.
"""

from .calib import load_calibration, synthetic_calibration
from .detection import DetectionAdapter, detection_postprocess
from .executorch import check_parity_pte, to_pte
from .metadata import sidecar_path, write_sidecar
from .mobile import OrtConversion, to_ort
from .onnx_export import DEFAULT_OPSET, EXPORTERS, OnnxExport, to_onnx
from .parity import ParityReport, check_parity, make_session
from .pipeline import ExportResult, export_model, export_onnx_verified, load_model
from .quantize import QuantReport, quantize_int8
from .spec import DEFAULT_ATOL, ExportSpec, build_spec
from .tflite import check_parity_tflite, to_tflite

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_OPSET",
    "DetectionAdapter",
    "EXPORTERS",
    "ExportResult",
    "ExportSpec",
    "OnnxExport",
    "OrtConversion",
    "ParityReport",
    "QuantReport",
    "build_spec",
    "check_parity",
    "check_parity_pte",
    "check_parity_tflite",
    "detection_postprocess",
    "export_model",
    "export_onnx_verified",
    "load_calibration",
    "load_model",
    "make_session",
    "quantize_int8",
    "sidecar_path",
    "synthetic_calibration",
    "to_onnx",
    "to_ort",
    "to_pte",
    "to_tflite",
    "write_sidecar",
]
