"""DSRestoreFaces: A1111's "Restore faces" for any IMAGE in a graph.

Thin: engine/face_restore.py detects, aligns, restores and pastes back; face_models.py
finds and loads the two model files. The A1111 API adds this node after the decode when
a request sends `restore_faces: true`.
"""
from __future__ import annotations

from comfy_api.latest import io

from . import comfy_bridge, face_models
from .engine import face_boxes
from .engine import face_restore as engine
from .types import category


class DSRestoreFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        face_models.register()
        detectors = face_models.DETECTORS.names()
        return io.Schema(
            node_id="DSRestoreFaces",
            display_name="Diffusers Restore Faces",
            category=category("image"),
            description=(
                "Finds faces with RetinaFace, restores each with GFPGAN, CodeFormer or RestoreFormer on its "
                "512x512 aligned crop, and pastes it back with a soft edge: A1111's 'Restore faces'. Put the "
                "restorer in models/facerestore_models and facexlib's detection_Resnet50_Final.pth in "
                "models/facedetection. Pictures without a face pass through unchanged."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The pictures to restore faces in (a decoded result or Load Image)."),
                io.Combo.Input("restorer_name", options=face_models.RESTORERS.names(),
                               tooltip="The face-restoration model from models/facerestore_models: "
                               "GFPGANv1.4.pth, RestoreFormer, or codeformer.pth (CodeFormer needs "
                               "spandrel_extra_arches installed)."),
                io.Combo.Input("detector_name", options=detectors,
                               default=face_models.preferred_detector(detectors),
                               tooltip="The RetinaFace face detector from models/facedetection: facexlib's "
                               "detection_Resnet50_Final.pth (as A1111) or detection_mobilenet0.25_Final.pth."),
                io.Float.Input("codeformer_weight", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="CodeFormer only (A1111's code_former_weight): 0 restores most strongly, "
                               "1 keeps the most of the original face. Other restorers ignore it."),
                io.Float.Input("visibility", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="How much of the restored picture shows: 1 all of it (A1111's txt2img), "
                               "lower values blend with the original (A1111's extras visibility)."),
                io.Float.Input("confidence", default=face_boxes.DEFAULT_CONFIDENCE, min=0.05, max=0.999,
                               step=0.001, tooltip="How sure the detector must be that it sees a face "
                               "(A1111 uses 0.97); lower finds more faces and more false ones."),
                io.Int.Input("detection_size", default=engine.DETECTION_SIZE, min=64, max=4096, step=8,
                             tooltip="The picture's shorter side is scaled to this many pixels for detection "
                             "(A1111: 640); larger finds smaller faces, slower."),
            ],
            outputs=[io.Image.Output(tooltip="The pictures with their faces restored, for Save Image.")],
        )

    @classmethod
    def validate_inputs(cls, restorer_name: str = "", detector_name: str = "") -> bool | str:
        face_models.register()
        if face_models.RESTORERS.resolve(restorer_name) is None:
            return face_models.RESTORERS.unknown_message(restorer_name)
        if face_models.DETECTORS.resolve(detector_name) is None:
            return face_models.DETECTORS.unknown_message(detector_name) + (
                f" A1111's detector is facexlib's {face_models.DETECTOR_FILE}.")
        return True

    @classmethod
    def execute(cls, image, restorer_name: str, detector_name: str, codeformer_weight: float = 0.5,
                visibility: float = 1.0, confidence: float = face_boxes.DEFAULT_CONFIDENCE,
                detection_size: int = engine.DETECTION_SIZE) -> io.NodeOutput:
        engine.check_settings(visibility, confidence, detection_size)
        face_models.register()
        detector = face_models.detector(detector_name)
        restore, _arch = face_models.restorer(restorer_name, codeformer_weight)
        try:
            result, _counts = engine.restore_faces(
                image, detector, restore, visibility=visibility, confidence=confidence,
                detection_size=detection_size, on_picture=comfy_bridge.counter(int(image.shape[0])),
            )
        finally:
            face_models.offload()
        return io.NodeOutput(result.cpu())


NODES = [DSRestoreFaces]
