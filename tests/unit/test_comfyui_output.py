"""`make run`'s filter of ComfyUI's output (scripts/comfyui_output.py): the torchaudio noise goes, nothing else."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from comfyui_output import MISSING, filtered, note  # noqa: E402

# ComfyUI 0.3.75's start without torchaudio, as `make run` showed it (paths shortened).
START = """\
Device: cpu
torchaudio missing, ACE model will be broken
torchaudio missing, ACE model will be broken
torchaudio missing, MMAudio VAE model will be broken
ComfyUI version: 0.3.75
Traceback (most recent call last):
  File "/env/comfyui/nodes.py", line 2146, in load_custom_node
    module_spec.loader.exec_module(module)
  File "/env/comfyui/comfy_extras/nodes_audio.py", line 4, in <module>
    import torchaudio
ModuleNotFoundError: No module named 'torchaudio'

Cannot import /env/comfyui/comfy_extras/nodes_audio.py module for custom nodes: No module named 'torchaudio'
Total VRAM 24105 MB, total RAM 24105 MB
Traceback (most recent call last):
  File "/env/comfyui/nodes.py", line 2146, in load_custom_node
    module_spec.loader.exec_module(module)
  File "/env/comfyui/comfy/audio_encoders/whisper.py", line 4, in <module>
    import torchaudio
ModuleNotFoundError: No module named 'torchaudio'

Cannot import /env/comfyui/comfy_extras/nodes_audio_encoder.py module for custom nodes: No module named 'torchaudio'

Import times for custom nodes:
   0.6 seconds: /base/custom_nodes/diffusers_studio

WARNING: some comfy_extras/ nodes did not import correctly. This may be because they are missing some dependencies.

IMPORT FAILED: nodes_audio.py
IMPORT FAILED: nodes_audio_encoder.py

This issue might be caused by new missing dependencies added the last time you updated ComfyUI.
Please do a: pip install -r requirements.txt

Starting server
To see the GUI go to: http://127.0.0.1:8188""".splitlines()

OTHER_TRACEBACK = """\
Traceback (most recent call last):
  File "/env/comfyui/nodes.py", line 2146, in load_custom_node
    import cv2
ModuleNotFoundError: No module named 'cv2'

Cannot import /env/comfyui/comfy_extras/nodes_canny.py module for custom nodes: No module named 'cv2'""".splitlines()


def test_the_torchaudio_noise_becomes_one_line_and_everything_else_stays_in_order():
    shown = list(filtered(START, "2.14.1"))
    text = "\n".join(shown)
    for gone in ("torchaudio missing", MISSING, "Traceback", "IMPORT FAILED", "Cannot import", "pip install"):
        assert gone not in text, f"{gone!r} is still shown:\n{text}"
    assert shown.count(note("2.14.1")) == 1, text
    kept = [line for line in shown if line != note("2.14.1")]
    expected = [
        "Device: cpu", "ComfyUI version: 0.3.75", "Total VRAM 24105 MB, total RAM 24105 MB", "",
        "Import times for custom nodes:", "   0.6 seconds: /base/custom_nodes/diffusers_studio", "",
        "Starting server", "To see the GUI go to: http://127.0.0.1:8188",
    ]
    assert kept == expected
    assert shown.index(note("2.14.1")) == 1  # where the first torchaudio line was


def test_another_missing_module_keeps_its_traceback_and_its_import_failed_entry():
    block = [
        "WARNING: some comfy_extras/ nodes did not import correctly. This may be because they are missing some dependencies.",
        "",
        "IMPORT FAILED: nodes_audio.py",
        "IMPORT FAILED: nodes_canny.py",
        "",
        "Please do a: pip install -r requirements.txt",
    ]
    lines = START[5:13] + OTHER_TRACEBACK + block
    shown = list(filtered(lines))
    assert shown[0] == note("")  # the torchaudio traceback came first
    assert [line for line in shown if line != note("")] == OTHER_TRACEBACK + [
        block[0], "", "IMPORT FAILED: nodes_canny.py", "", block[-1]
    ]


def test_output_that_ends_inside_a_traceback_is_shown_not_swallowed():
    cut = OTHER_TRACEBACK[:3]
    assert list(filtered(cut)) == cut


def test_without_torchaudio_noise_nothing_changes_and_nothing_is_added():
    lines = ["Device: cuda:0", "", *OTHER_TRACEBACK, "Starting server"]
    assert list(filtered(lines)) == lines
