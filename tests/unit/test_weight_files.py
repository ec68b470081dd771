"""The one gate every pickled weight file goes through (nodes/engine/weight_files.py).

Each loader (embeddings, LoRAs, ControlNets, IP-Adapters, face models) must refuse a
code-carrying pickle and a damaged file with the same message, naming the input and
the file, and open a plain-tensor pickle unchanged.
"""
import os

import pytest
import torch

from diffusers_studio.nodes.engine import controlnet_loading, face_weights, ip_adapter_loading, lora
from diffusers_studio.nodes.engine.embeddings import load_embedding
from diffusers_studio.nodes.engine.families import ModelLoadError
from diffusers_studio.nodes.engine.ip_adapter_loading import IPAdapterLoadError
from diffusers_studio.nodes.engine.weight_files import load_plain_tensors


@pytest.fixture
def files(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, plain)
    code = tmp_path / "code.pth"
    torch.save({"w": torch.zeros(1), "hook": os.getcwd}, code)
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(plain.read_bytes()[:40])
    return {"plain": str(plain), "code": str(code), "damaged": str(damaged)}


def test_plain_tensors_open_unchanged(files):
    data = load_plain_tensors(files["plain"], "x: 'plain.pth'")
    assert torch.equal(data["w"], torch.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("which", ["code", "damaged"])
def test_code_and_damage_are_refused_with_one_message(files, which):
    with pytest.raises(ModelLoadError) as caught:
        load_plain_tensors(files[which], f"ControlNet '{which}.pth'", ModelLoadError)
    text = str(caught.value)
    assert text.startswith(f"ControlNet '{which}.pth' was refused: torch.load(weights_only=True)")
    assert "carries code" in text and "damaged" in text and ".safetensors" in text
    assert caught.value.__cause__ is None  # the message stands alone, no pickle traceback


@pytest.mark.parametrize(
    "read, error, subject",
    [
        (lambda p: load_embedding(p), ValueError, "embedding 'code.pth'"),
        (lambda p: lora.read_state_dict(p), ValueError, "lora_name: 'code.pth'"),
        (lambda p: controlnet_loading._read_state_dict(p), ModelLoadError, "ControlNet 'code.pth'"),
        (lambda p: ip_adapter_loading.read_state_dict(p, "code.pth"), IPAdapterLoadError, "ipadapter_file: 'code.pth'"),
        (lambda p: face_weights.read_state_dict(p, "restorer_name"), ValueError, "restorer_name: 'code.pth'"),
    ],
    ids=["embedding", "lora", "controlnet", "ip_adapter", "face"],
)
def test_every_loader_refuses_through_the_gate(files, read, error, subject):
    with pytest.raises(error, match=f"^{subject} was refused: torch.load"):
        read(files["code"])
