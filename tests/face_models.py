"""Face-restoration models built in code for the tests: nothing is downloaded.

- `one_face_detector`: a RetinaFace (MobileNet-0.25, facexlib's key layout) whose weights
  are all zero except a few, set so that it reports exactly one face, with landmarks where
  the test asks, whatever the picture shows. How: the stride-32 pyramid level is a constant
  1 (a batch norm's bias); the SSH 3x3 conv of that level sums the five neighbours above
  and to the left with weight -1, so after its bias and ReLU only the top-left location
  stays positive (only there are all five neighbours outside the picture); the class head
  turns that one location's first anchor into a confident face and every other prior into
  background. The box and landmark heads' biases then place the face: a landmark is the
  prior centre (16, 16) plus offset * 0.1 * 256 pixels of the detection-sized picture.
- `tiny_restoreformer_state_dict`: a RestoreFormer small enough to run in a test, which
  spandrel loads (it reads RestoreFormer's sizes from the state dict).
- `gfpgan_state_dict`: a full-size random GFPGAN v1.4 layout (spandrel's GFPGAN has fixed
  sizes; about 87M parameters, ~10 s to build and load here).
"""
from __future__ import annotations

import math

import torch

from diffusers_studio.nodes.engine.face_detector import MOBILENET, RetinaFace

PRIOR_CENTRE = 16.0  # the top-left stride-32 prior, in detection pixels
PRIOR_SIZE = 256.0  # its first anchor's side


def _zero_(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        elif isinstance(module, torch.nn.Conv2d):
            module.weight.data.zero_()
            if module.bias is not None:
                module.bias.data.zero_()


def one_face_detector(landmarks, image_size, detection_size: int = 640, box=None) -> RetinaFace:
    """A detector reporting one face with these five (x, y) landmarks in a picture of
    image_size (height, width), as seen at A1111's detection size."""
    height, width = image_size
    scale = detection_size / min(height, width)
    model = RetinaFace(MOBILENET).eval()
    with torch.no_grad():
        _zero_(model)
        model.fpn.output3[1].weight.data.zero_()
        model.fpn.output3[1].bias.data[0] = 1.0
        kernel = model.ssh3.conv3X3[0].weight.data
        for ky, kx in ((0, 0), (0, 1), (0, 2), (1, 0), (2, 0)):
            kernel[0, 0, ky, kx] = -1.0
        model.ssh3.conv3X3[1].bias.data[0] = 1.0
        for head in model.ClassHead:
            head.conv1x1.bias.data[:] = torch.tensor([0.0, -10.0, 0.0, -10.0])
        model.ClassHead[2].conv1x1.weight.data[1, 0] = 20.0
        points = [(x * scale, y * scale) for x, y in landmarks]
        step = 0.1 * PRIOR_SIZE
        offsets = [(p - PRIOR_CENTRE) / step for xy in points for p in xy]
        model.LandmarkHead[2].conv1x1.bias.data[:10] = torch.tensor(offsets)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x1, y1, x2, y2 = box if box is not None else (min(xs), min(ys), max(xs), max(ys))
        if box is not None:
            x1, y1, x2, y2 = (v * scale for v in box)
        w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        model.BboxHead[2].conv1x1.bias.data[:4] = torch.tensor([
            ((x1 + x2) / 2 - PRIOR_CENTRE) / step, ((y1 + y2) / 2 - PRIOR_CENTRE) / step,
            math.log(w / PRIOR_SIZE) / 0.2, math.log(h / PRIOR_SIZE) / 0.2,
        ])
    return model


def face_landmarks(cx: float, cy: float, eye_distance: float):
    """Five landmarks of an upright face centred near (cx, cy), in the template's proportions."""
    from diffusers_studio.nodes.engine.face_align import FFHQ_TEMPLATE

    template = torch.tensor(FFHQ_TEMPLATE)
    unit = (template - template.mean(0)) / (FFHQ_TEMPLATE[1, 0] - FFHQ_TEMPLATE[0, 0])
    return [(cx + float(x) * eye_distance, cy + float(y) * eye_distance) for x, y in unit]


def tiny_restoreformer_state_dict(seed: int = 0) -> dict:
    from spandrel.architectures.RestoreFormer import RestoreFormer

    torch.manual_seed(seed)
    model = RestoreFormer(n_embed=16, embed_dim=8, ch=32, out_ch=3, ch_mult=(1, 1, 1, 1), num_res_blocks=1,
                          attn_resolutions=(16,), dropout=0.0, in_channels=3, resolution=512, z_channels=32,
                          double_z=False, enable_mid=False, head_size=2)
    return model.state_dict()


def gfpgan_state_dict(seed: int = 0) -> dict:
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(seed)
    model = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
                   num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    return model.state_dict()


def codeformer_state_dict(seed: int = 0) -> dict:
    """CodeFormer's layout with a small transformer (its VQGAN is fixed at full size, ~72M
    parameters); spandrel reads dim_embd, n_layers, the codebook size and the fused scales
    back from these tensors, as from the released codeformer.pth."""
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    torch.manual_seed(seed)
    model = CodeFormer(dim_embd=64, n_layers=1, codebook_size=1024, connect_list=["32", "64"])
    return model.state_dict()
