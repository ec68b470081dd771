"""A1111's settings (`/sdapi/v1/options`), persisted in ComfyUI's user folder.

The file is `<ComfyUI user directory>/default/diffusers_studio/a1111_options.json`
(ComfyUI's per-user settings live in the same `default` folder), so it goes
where ComfyUI keeps user data, never outside ComfyUI's folders. Only POST
/sdapi/v1/options writes it; a request's `override_settings` never does.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Optional

log = logging.getLogger(__name__)

FILE_NAME = "a1111_options.json"
MAX_FILE_BYTES = 256 * 1024
SAMPLES_FORMATS = ("png", "jpg", "jpeg", "webp")

# The options the pack honours, with A1111's defaults. sd_model_checkpoint's
# default (None) means "the first model ComfyUI lists".
DEFAULTS: dict[str, Any] = {
    "sd_model_checkpoint": None,
    "sd_vae": "Automatic",
    "CLIP_stop_at_last_layers": 1,
    "samples_format": "png",
    "jpeg_quality": 80,
    "enable_pnginfo": True,
    "eta_noise_seed_delta": 0,
    "live_previews_enable": True,
    "outdir_txt2img_samples": "a1111/txt2img-images",
    "outdir_img2img_samples": "a1111/img2img-images",
    # the SDXL refiner's aesthetic-score conditioning (positive / negative prompt)
    "sdxl_refiner_high_aesthetic_score": 6.0,
    "sdxl_refiner_low_aesthetic_score": 2.5,
    "use_old_scheduling": False,  # A1111's "Use old prompt editing timelines"
    # Read by A1111's own API tests and its UI's "send to" buttons; stored and returned.
    "send_seed": True,
    "send_size": True,
    # restore_faces: which restorer (A1111 name or file in models/facerestore_models) and
    # CodeFormer's fidelity weight
    "face_restoration": False,  # restore faces when a request leaves restore_faces out
    "face_restoration_model": "CodeFormer",
    "code_former_weight": 0.5,
}
AESTHETIC_SCORE_KEYS = ("sdxl_refiner_high_aesthetic_score", "sdxl_refiner_low_aesthetic_score")
AESTHETIC_SCORE_RANGE = (0.0, 1000.0)  # DSSampler's inputs accept this range


class OptionError(ValueError):
    """A bad option value; `key` names the option."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


def check_value(key: str, value: Any) -> Any:
    """The value to store for `key`, or OptionError. Model names are checked by the caller."""
    if key == "CLIP_stop_at_last_layers":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise OptionError(key, f"must be a whole number from 1 to 12, got {value!r}")
        if not 1 <= int(value) <= 12:
            raise OptionError(key, f"must be from 1 to 12, got {value!r}")
        return int(value)
    if key == "samples_format":
        if not isinstance(value, str) or value.lower() not in SAMPLES_FORMATS:
            raise OptionError(key, f"must be one of {', '.join(SAMPLES_FORMATS)}, got {value!r}")
        return value.lower()
    if key == "jpeg_quality":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
            raise OptionError(key, f"must be a whole number from 1 to 100, got {value!r}")
        return value
    if key in ("sd_model_checkpoint", "sd_vae"):
        if value is not None and not isinstance(value, str):
            raise OptionError(key, f"must be a name (text), got {value!r}")
        return value
    if key in ("enable_pnginfo", "live_previews_enable", "use_old_scheduling", "send_seed", "send_size",
               "face_restoration"):
        if not isinstance(value, bool):
            raise OptionError(key, f"must be true or false, got {value!r}")
        return value
    if key in ("outdir_txt2img_samples", "outdir_img2img_samples"):
        # A subfolder of ComfyUI's output folder, never a path outside it.
        if not isinstance(value, str) or os.path.isabs(value) or ".." in value.replace("\\", "/").split("/"):
            raise OptionError(key, f"must be a folder inside ComfyUI's output folder, got {value!r}")
        return value
    if key in AESTHETIC_SCORE_KEYS:
        low, high = AESTHETIC_SCORE_RANGE
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise OptionError(key, f"must be a number from {low:g} to {high:g} (A1111's default "
                                   f"{DEFAULTS[key]:g}), got {value!r}")
        return float(value)
    if key == "face_restoration_model":
        if value is not None and not isinstance(value, str):
            raise OptionError(key, f"must be a restorer name (CodeFormer, GFPGAN or a file name), got {value!r}")
        return value
    if key == "code_former_weight":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise OptionError(key, f"must be a number from 0 to 1 (A1111's default 0.5), got {value!r}")
        return float(value)
    if key == "eta_noise_seed_delta":
        if value not in (0, None):
            raise OptionError(key, "only 0 is supported (the pack's noise does not use ENSD)")
        return 0
    # An option the pack does not use: kept as sent (clients round-trip the
    # whole dictionary), if it is plain JSON.
    if not isinstance(value, (str, int, float, bool, type(None), list, dict)):
        raise OptionError(key, "must be a JSON value")
    return value


class OptionsStore:
    """The persisted options; thread-safe, written atomically."""

    def __init__(self, path: Optional[str] = None):
        self._path = path
        self._lock = threading.Lock()
        self._values: Optional[dict[str, Any]] = None

    @property
    def path(self) -> str:
        if self._path is None:
            import folder_paths

            self._path = os.path.join(folder_paths.get_user_directory(), "default", "diffusers_studio", FILE_NAME)
        return self._path

    def _load(self) -> dict[str, Any]:
        if self._values is None:
            values = dict(DEFAULTS)
            try:
                with open(self.path, encoding="utf-8") as handle:
                    stored = json.load(handle)
                if isinstance(stored, dict):
                    for key, value in stored.items():
                        try:
                            values[key] = check_value(key, value)
                        except OptionError as exc:
                            log.warning("ignoring stored A1111 option %s", exc)
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as exc:
                log.warning("could not read %s (%s); using defaults", self.path, exc)
            self._values = values
        return self._values

    def all(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._load())

    def get(self, key: str) -> Any:
        with self._lock:
            return self._load().get(key, DEFAULTS.get(key))

    def update(self, changes: dict[str, Any]) -> None:
        """Check every value first, then store and write them all (or none)."""
        checked = {key: check_value(key, value) for key, value in changes.items()}
        with self._lock:
            values = dict(self._load())
            values.update(checked)
            text = json.dumps(values, indent=1, sort_keys=True)
            if len(text.encode("utf-8")) > MAX_FILE_BYTES:
                raise OptionError("options", f"the settings would exceed {MAX_FILE_BYTES} bytes")
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, self.path)
            self._values = values


store = OptionsStore()
