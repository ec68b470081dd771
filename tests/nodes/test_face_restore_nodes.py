"""DSRestoreFaces and its model files: spandrel restorers (GFPGAN, RestoreFormer, and
CodeFormer through spandrel_extra_arches) and the RetinaFace detector read from ComfyUI's folders, built in code with random or set weights."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from face_models import codeformer_state_dict, face_landmarks, gfpgan_state_dict, one_face_detector, tiny_restoreformer_state_dict

SIZE = (64, 64)
LANDMARKS = face_landmarks(32, 30, 8)


class _NotATensor:
    """Anything a weights-only unpickler must refuse."""


@pytest.fixture(scope="module")
def face_dirs(tmp_path_factory):
    import folder_paths

    from diffusers_studio.nodes import face_models

    face_models.register()
    root = tmp_path_factory.mktemp("face_models")
    restorers, detectors = root / "facerestore_models", root / "facedetection"
    restorers.mkdir()
    detectors.mkdir()
    save_file(tiny_restoreformer_state_dict(), str(restorers / "tiny-RestoreFormer.safetensors"))
    detector = one_face_detector(LANDMARKS, SIZE).state_dict()
    save_file(detector, str(detectors / "one-face-mobilenet.safetensors"))
    torch.save({f"module.{k}": v for k, v in detector.items()}, detectors / "detection_mobilenet0.25_Final.pth")
    torch.save({"weights": _NotATensor()}, detectors / "pickled-code.pth")
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    upscaler = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).state_dict()
    save_file(upscaler, str(restorers / "2x-compact.safetensors"))
    folder_paths.add_model_folder_path("facerestore_models", str(restorers), is_default=True)
    folder_paths.add_model_folder_path("facedetection", str(detectors), is_default=True)
    folder_paths.filename_list_cache.clear()
    return root


def test_spandrel_loads_a_random_gfpgan_state_dict(tmp_path):
    """GFPGAN v1.4's layout (spandrel's GFPGAN has fixed, full sizes: ~87M parameters),
    nested under params_ema as the released .pth is."""
    from diffusers_studio.nodes import face_models

    path = tmp_path / "GFPGANv1.4.pth"
    torch.save({"params_ema": gfpgan_state_dict()}, path)
    descriptor = face_models._load_restorer(str(path), "GFPGANv1.4.pth")
    assert descriptor.architecture.id == "GFPGAN" and descriptor.purpose == "FaceSR"
    assert descriptor.size_requirements.minimum == 512


def test_codeformer_loads_and_its_fidelity_weight_is_honoured(face_dirs):
    """The released codeformer.pth nests its weights under params_ema; spandrel_extra_arches
    (a dev requirement, optional for users) supplies the architecture. A1111's
    code_former_weight reaches the model: 0 and 1 restore the same face differently."""
    import folder_paths

    from diffusers_studio.nodes import face_models
    from diffusers_studio.nodes.face_restore import DSRestoreFaces

    path = face_dirs / "facerestore_models" / "codeformer-v0.1.0.pth"
    torch.save({"params_ema": codeformer_state_dict()}, path)
    folder_paths.filename_list_cache.clear()
    descriptor = face_models._load_restorer(str(path), path.name)
    assert (descriptor.architecture.id, descriptor.purpose) == ("CodeFormer", "FaceSR")
    assert (descriptor.model.dim_embd, descriptor.model.n_layers) == (64, 1)

    torch.manual_seed(2)
    image = torch.rand(1, *SIZE, 3)
    detector = "one-face-mobilenet.safetensors"
    assert DSRestoreFaces.validate_inputs(path.name, detector) is True
    faithful = DSRestoreFaces.execute(image, path.name, detector, codeformer_weight=1.0).args[0]
    free = DSRestoreFaces.execute(image, path.name, detector, codeformer_weight=0.0).args[0]
    for out in (faithful, free):
        changed = (out - image).abs().amax(-1)[0] > 1e-4
        assert changed[30, 32] and not changed[:8].any() and not changed[:, 52:].any()
    assert (faithful - free).abs().amax() > 1e-3


def test_node_restores_the_detected_face_only(face_dirs):
    from diffusers_studio.nodes.face_restore import DSRestoreFaces

    torch.manual_seed(1)
    image = torch.rand(1, *SIZE, 3)
    for detector in ("one-face-mobilenet.safetensors", "detection_mobilenet0.25_Final.pth"):
        assert DSRestoreFaces.validate_inputs("tiny-RestoreFormer.safetensors", detector) is True
    out = DSRestoreFaces.execute(image, "tiny-RestoreFormer.safetensors", "detection_mobilenet0.25_Final.pth").args[0]
    assert out.shape == image.shape
    changed = (out - image).abs().amax(-1)[0] > 1e-4
    assert changed[30, 32] and changed[22:38, 26:38].float().mean() > 0.9
    assert not changed[:8].any() and not changed[:, :12].any() and not changed[:, 52:].any()
    again = DSRestoreFaces.execute(image, "tiny-RestoreFormer.safetensors", "one-face-mobilenet.safetensors").args[0]
    assert torch.equal(again, out)  # the same file either way; the restorer's noise is seeded


def test_wrong_files_name_the_input_and_the_fix(face_dirs):
    from diffusers_studio.nodes.face_restore import DSRestoreFaces

    image = torch.rand(1, *SIZE, 3)
    message = DSRestoreFaces.validate_inputs("missing.pth", "one-face-mobilenet.safetensors")
    assert message.startswith("restorer_name: 'missing.pth'") and "models/facerestore_models" in message
    message = DSRestoreFaces.validate_inputs("tiny-RestoreFormer.safetensors", "nope.pth")
    assert "models/facedetection" in message and "detection_Resnet50_Final.pth" in message
    with pytest.raises(ValueError, match="restorer_name: '2x-compact.safetensors' is a .*not a face restorer"):
        DSRestoreFaces.execute(image, "2x-compact.safetensors", "one-face-mobilenet.safetensors")
    with pytest.raises(ValueError, match="detector_name: 'pickled-code.pth' was refused: .*carries code"):
        DSRestoreFaces.execute(image, "tiny-RestoreFormer.safetensors", "pickled-code.pth")
    with pytest.raises(ValueError, match="detector_name: .* is not a face detector in ComfyUI's models/facedetection"):
        DSRestoreFaces.execute(image, "tiny-RestoreFormer.safetensors", "../facerestore_models/x")  # not listed
    with pytest.raises(ValueError, match="visibility"):
        DSRestoreFaces.execute(image, "tiny-RestoreFormer.safetensors", "one-face-mobilenet.safetensors",
                               visibility=2.0)
