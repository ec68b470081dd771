"""The face-restoration engine: RetinaFace in facexlib's layout, priors/decoding/NMS on known
values, the FFHQ alignment round trip, the feathered paste-back, and the whole pipeline
with a detector set to report one face at a known place."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from face_models import face_landmarks, one_face_detector
from diffusers_studio.nodes.engine import face_align, face_boxes, face_detector, face_paste, face_restore

# facexlib's parameter names and shapes (ResNet-50: pyramid/heads 256 wide; MobileNet-0.25: 64).
RESNET_KEYS = {
    "body.conv1.weight": (64, 3, 7, 7),
    "body.bn1.running_var": (64,),
    "body.layer1.0.conv1.weight": (64, 64, 1, 1),
    "body.layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "body.layer4.2.conv3.weight": (2048, 512, 1, 1),
    "fpn.output1.0.weight": (256, 512, 1, 1),
    "fpn.output1.1.weight": (256,),
    "fpn.output3.0.weight": (256, 2048, 1, 1),
    "fpn.merge1.0.weight": (256, 256, 3, 3),
    "fpn.merge2.1.running_mean": (256,),
    "ssh1.conv3X3.0.weight": (128, 256, 3, 3),
    "ssh1.conv5X5_1.0.weight": (64, 256, 3, 3),
    "ssh2.conv5X5_2.0.weight": (64, 64, 3, 3),
    "ssh3.conv7X7_2.0.weight": (64, 64, 3, 3),
    "ssh3.conv7x7_3.1.bias": (64,),
    "ClassHead.0.conv1x1.weight": (4, 256, 1, 1),
    "ClassHead.2.conv1x1.bias": (4,),
    "BboxHead.1.conv1x1.weight": (8, 256, 1, 1),
    "LandmarkHead.2.conv1x1.weight": (20, 256, 1, 1),
}
MOBILENET_KEYS = {
    "body.stage1.0.0.weight": (8, 3, 3, 3),
    "body.stage1.1.0.weight": (8, 1, 3, 3),
    "body.stage1.1.3.weight": (16, 8, 1, 1),
    "body.stage2.5.4.running_var": (128,),
    "body.stage3.1.3.weight": (256, 256, 1, 1),
    "fpn.output1.0.weight": (64, 64, 1, 1),
    "fpn.output3.0.weight": (64, 256, 1, 1),
    "ssh1.conv3X3.0.weight": (32, 64, 3, 3),
    "ClassHead.1.conv1x1.weight": (4, 64, 1, 1),
    "LandmarkHead.0.conv1x1.bias": (20,),
}


@pytest.mark.parametrize("config,expected", [
    (face_detector.RESNET50, RESNET_KEYS), (face_detector.MOBILENET, MOBILENET_KEYS)])
def test_retinaface_has_facexlibs_parameter_names_and_sizes(config, expected):
    state = face_detector.RetinaFace(config).state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    assert not any(k.startswith(("body.fc", "body.avg")) for k in shapes)  # the classifier is not in the file
    prefixes = {k.split(".")[0] for k in shapes}
    assert prefixes == {"body", "fpn", "ssh1", "ssh2", "ssh3", "ClassHead", "BboxHead", "LandmarkHead"}


def test_detector_loads_a_module_prefixed_state_dict_and_refuses_others():
    torch.manual_seed(0)
    source = face_detector.RetinaFace(face_detector.MOBILENET).eval()
    state = {f"module.{k}": v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    loaded = face_detector.from_state_dict(state, "detection_mobilenet0.25_Final.pth")
    assert loaded.config is face_detector.MOBILENET
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        for a, b in zip(source(x), loaded(x)):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not a RetinaFace"):
        face_detector.from_state_dict({"conv.weight": torch.zeros(1)})
    broken = dict(state)
    broken.pop("module.ssh2.conv3X3.0.weight")
    with pytest.raises(ValueError, match="ssh2.conv3X3.0.weight"):
        face_detector.from_state_dict(broken, "x.pth")


def test_prior_boxes_tile_each_level_in_head_order():
    priors = face_boxes.prior_boxes(64, 96, ((16, 32), (64, 128), (256, 512)), (8, 16, 32))
    # (8 x 12 + 4 x 6 + 2 x 3) locations, two anchors each
    assert priors.shape == (2 * (96 + 24 + 6), 4)
    assert torch.allclose(priors[0], torch.tensor([4 / 96, 4 / 64, 16 / 96, 16 / 64]))
    assert torch.allclose(priors[1], torch.tensor([4 / 96, 4 / 64, 32 / 96, 32 / 64]))
    assert torch.allclose(priors[2], torch.tensor([12 / 96, 4 / 64, 16 / 96, 16 / 64]))  # next column
    assert torch.allclose(priors[24], torch.tensor([4 / 96, 12 / 64, 16 / 96, 16 / 64]))  # next row
    assert torch.allclose(priors[192], torch.tensor([8 / 96, 8 / 64, 64 / 96, 64 / 64]))  # stride 16 starts
    assert torch.allclose(priors[-1], torch.tensor([80 / 96, 48 / 64, 512 / 96, 512 / 64]))


def test_decoding_offsets_follows_the_variances():
    priors = torch.tensor([[0.5, 0.25, 0.2, 0.4]])
    assert torch.allclose(face_boxes.decode_boxes(torch.zeros(1, 4), priors),
                          torch.tensor([[0.4, 0.05, 0.6, 0.45]]))
    offsets = torch.tensor([[1.0, -2.0, math.log(2.0) / 0.2, 0.0]])
    # centre (0.5 + 0.1 * 0.2, 0.25 - 2 * 0.1 * 0.4) = (0.52, 0.17); width doubled to 0.4
    assert torch.allclose(face_boxes.decode_boxes(offsets, priors), torch.tensor([[0.32, -0.03, 0.72, 0.37]]),
                          atol=1e-6)
    marks = torch.tensor([[0.0, 0.0, 1.0, 1.0, -1.0, 0.0, 0.0, 5.0, 10.0, -10.0]])
    expected = torch.tensor([[0.5, 0.25, 0.52, 0.29, 0.48, 0.25, 0.5, 0.45, 0.7, -0.15]])
    assert torch.allclose(face_boxes.decode_landmarks(marks, priors), expected, atol=1e-6)


def test_select_thresholds_sorts_and_suppresses_overlaps():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [100, 100, 110, 110]], dtype=torch.float32)
    scores = torch.tensor([0.98, 0.99, 0.975, 0.5])
    marks = torch.arange(40, dtype=torch.float32).reshape(4, 10)
    faces = face_boxes.select(boxes, scores, marks, 0.97, 0.4)
    assert [f.box for f in faces] == [(1, 1, 11, 11), (50, 50, 60, 60)]
    assert faces[0].landmarks[0] == (10.0, 11.0) and faces[1].landmarks[4] == (28.0, 29.0)
    assert face_boxes.select(boxes, scores, marks, 0.999, 0.4) == []


def test_similarity_transform_recovers_a_known_one():
    angle, scale = math.radians(12), 3.5
    truth = np.array([[scale * math.cos(angle), -scale * math.sin(angle), 40.0],
                      [scale * math.sin(angle), scale * math.cos(angle), -7.0]])
    src = np.array(face_landmarks(30, 40, 9))
    dst = src @ truth[:, :2].T + truth[:, 2]
    assert np.allclose(face_align.similarity_transform(src, dst), truth, atol=1e-9)
    assert np.allclose(face_align.invert_affine(truth) @ np.append(dst[0], 1.0), src[0])
    with pytest.raises(ValueError, match="similarity_transform"):
        face_align.similarity_transform(src[:1], dst[:1])


def _smooth_picture(height, width):
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return torch.stack([x, y, 0.5 + 0.4 * torch.sin(6 * x) * torch.cos(4 * y)])[None]


def test_alignment_round_trip_reproduces_the_crop_region():
    picture = _smooth_picture(160, 200)
    landmarks = face_landmarks(110, 80, 24)
    landmarks = [(x + 0.15 * (y - 80), y - 0.15 * (x - 110)) for x, y in landmarks]  # a tilted face
    crop, matrix = face_align.align_face(picture, landmarks)
    assert crop.shape == (1, 3, 512, 512)
    # the landmarks land on the template
    mapped = np.array(landmarks) @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(mapped - face_align.FFHQ_TEMPLATE).max() < 3.0
    back = face_align.warp_affine(crop, face_align.invert_affine(matrix), (160, 200))
    inside, _ = face_paste.soft_mask(matrix, 512, 160, 200)
    inside = face_paste.erode(inside, 3)[0, 0] > 0.999
    assert inside.sum() > 1000 and not inside.all()
    assert (back - picture)[0][:, inside].abs().max() < 0.02
    # a face at the picture's corner: outside the picture the crop shows facexlib's grey border
    corner, _ = face_align.align_face(picture, face_landmarks(4, 4, 24))
    assert torch.allclose(corner[0, :, 5, 5], torch.tensor(face_align.BORDER_RGB))
    assert not torch.allclose(corner[0, :, 500, 500], torch.tensor(face_align.BORDER_RGB))


def test_paste_back_changes_only_the_face_region_and_feathers_it():
    canvas = _smooth_picture(120, 120)
    landmarks = face_landmarks(60, 60, 20)
    _, matrix = face_align.align_face(canvas, landmarks)
    white = torch.ones(1, 3, 512, 512)
    pasted = face_paste.paste_face(canvas, white, matrix)
    hard, feathered = face_paste.soft_mask(matrix, 512, 120, 120)
    outside = feathered[0, 0] == 0
    assert outside.any() and torch.equal(pasted[0][:, outside], canvas[0][:, outside])
    centre = feathered[0, 0] == 1
    assert centre.any() and torch.allclose(pasted[0][:, centre], torch.ones(1), atol=1e-5)
    between = (feathered[0, 0] > 0.05) & (feathered[0, 0] < 0.95)
    assert between.any(), "the mask is feathered"


def test_erode_and_blur_follow_opencvs_conventions():
    mask = torch.zeros(1, 1, 9, 9)
    mask[..., 2:7, 2:7] = 1
    eroded = face_paste.erode(mask, 2)  # even kernel anchored at its centre: covers offsets -1..0
    assert eroded[0, 0, 3:7, 3:7].eq(1).all() and eroded[0, 0, 2].eq(0).all() and eroded[0, 0, :, 2].eq(0).all()
    assert face_paste.erode(torch.ones(1, 1, 4, 4), 3).eq(1).all()  # the border does not erode
    spot = torch.zeros(1, 1, 12, 12)
    spot[..., 5:7, 5:7] = 1
    blurred = face_paste.gaussian_blur(spot, 5)  # sigma 1.1, as OpenCV picks for a 5x5 kernel
    assert torch.isclose(blurred.sum(), spot.sum(), atol=1e-4) and blurred[0, 0, 0, 0] == 0
    weights = torch.exp(-torch.arange(-2.0, 3.0) ** 2 / (2 * 1.1 ** 2))
    weights = weights / weights.sum()
    assert torch.isclose(blurred[0, 0, 3, 5], weights[0] * (weights[2] + weights[3]))
    edge = torch.zeros(1, 1, 6, 6)
    edge[..., 0, :] = 1
    centre = 1 / (1 + 2 * math.exp(-1 / (2 * 0.8 ** 2)))  # sigma 0.8 for a 3x3 kernel
    # reflect-101 mirrors row 1 (zero) above row 0; plain reflection would repeat row 0
    assert torch.isclose(face_paste.gaussian_blur(edge, 3)[0, 0, 0, 0], torch.tensor(centre))


def test_pipeline_restores_the_one_detected_face_and_leaves_the_rest():
    torch.manual_seed(0)
    images = torch.rand(2, 64, 80, 3)
    landmarks = face_landmarks(40, 30, 8)
    detector = one_face_detector(landmarks, (64, 80))
    faces = face_restore.detect_faces(detector, images[:1].permute(0, 3, 1, 2))
    assert len(faces) == 1 and faces[0].score > 0.99
    assert np.allclose(np.array(faces[0].landmarks), np.array(landmarks), atol=1e-3)

    seen = []

    def restorer(crop):
        seen.append(crop.shape)
        assert -1.0 <= float(crop.min()) and float(crop.max()) <= 1.0
        return -crop

    out, counts = face_restore.restore_faces(images, detector, restorer)
    assert counts == [1, 1] and seen == [(1, 3, 512, 512)] * 2
    changed = (out - images).abs().amax(-1) > 1e-6
    assert changed[:, 30, 40].all()
    assert not changed[:, :8].any() and not changed[:, :, :16].any() and not changed[:, 56:].any()
    half, _ = face_restore.restore_faces(images[:1], detector, restorer, visibility=0.5)
    assert torch.allclose(half, (images[:1] + out[:1]) / 2, atol=1e-5)


def test_pipeline_skips_small_faces_and_checks_its_settings():
    images = torch.rand(1, 64, 64, 3)
    detector = one_face_detector(face_landmarks(32, 32, 3), (64, 64))
    out, counts = face_restore.restore_faces(images, detector, lambda crop: -crop)
    assert counts == [0] and torch.equal(out, images)
    for kwargs, name in (({"visibility": 1.5}, "visibility"), ({"confidence": 1.0}, "confidence"),
                         ({"detection_size": 10}, "detection_size")):
        with pytest.raises(ValueError, match=name):
            face_restore.restore_faces(images, detector, lambda crop: crop, **kwargs)
