"""The one place that touches ComfyUI internals.

Everything the engine needs from ComfyUI arrives through here as plain values
and callbacks: model paths resolved through `folder_paths` (never a raw path
from a widget), the device ComfyUI chose, ComfyUI's model management (so that
"Unload models", `POST /free` and ComfyUI's own memory planning see our
diffusers modules), the progress bar, latent previews and the interrupt flag.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch

import comfy.model_management as model_management
import comfy.model_patcher
import comfy.utils
import folder_paths

from . import comfy_cast

log = logging.getLogger(__name__)



# ---------------------------------------------------------------- model files
# `make run`'s random-weight demo models (and the tests' tiny models) live in
# models/diffusers_studio_demo/<kind>/, under the file names the shipped
# workflows use. Only the pack lists that folder: ComfyUI's native loaders
# cannot read these tiny files, and now never offer them.
DEMO_FOLDER = "diffusers_studio_demo"


def demo_root(kind: str) -> str:
    """models/diffusers_studio_demo/<kind> of the running ComfyUI."""
    return os.path.join(folder_paths.models_dir, DEMO_FOLDER, kind)


@dataclass(frozen=True)
class ModelFolder:
    """One kind of model in ComfyUI's model folders, picked by name from a widget.

    Files are listed by suffix through `folder_paths`; kinds that also come as
    folders (diffusers layouts) list the sub-folders `is_model_dir` accepts,
    and the files inside such a folder are not offered on their own. The
    pack's demo folder (`demo_root`) is listed after ComfyUI's folders, and a
    name found in both is the file in ComfyUI's folder. Only names that the
    listing itself produced resolve to a path, so a name with `..`, an
    absolute path or a symlink trick never reaches outside the model folders.
    """

    folder: str  # the folder_paths name, e.g. "checkpoints"
    input_name: str  # the widget that picks it, for messages
    suffixes: tuple = ()  # file suffixes offered (lower case); () for folders only
    is_model_dir: Optional[Callable[[str], bool]] = None
    what: str = "model"

    def register(self) -> None:
        """Add models/<folder> to folder_paths when this ComfyUI lacks it."""
        if self.folder not in folder_paths.folder_names_and_paths:
            path = os.path.join(folder_paths.models_dir, self.folder)
            folder_paths.folder_names_and_paths[self.folder] = ([path], set(folder_paths.supported_pt_extensions))

    def folders(self) -> dict[str, str]:
        """Model folders, name (relative, with '/') -> path."""
        found: dict[str, str] = {}
        if self.is_model_dir is None:
            return found
        for root in [*folder_paths.get_folder_paths(self.folder), demo_root(self.folder)]:
            if not os.path.isdir(root):
                continue
            for dirpath, dirnames, _files in os.walk(root, followlinks=True):
                dirnames.sort()
                if dirpath != root and self.is_model_dir(dirpath):
                    found.setdefault(os.path.relpath(dirpath, root).replace(os.sep, "/"), dirpath)
                    dirnames[:] = []  # a model folder's sub-folders are its parts
        return found

    def demo_files(self) -> dict[str, str]:
        """Files of the demo folder, name (relative, with '/') -> path."""
        found: dict[str, str] = {}
        root = demo_root(self.folder)
        if not self.suffixes or not os.path.isdir(root):
            return found
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            for filename in filenames:
                if filename.lower().endswith(self.suffixes):
                    path = os.path.join(dirpath, filename)
                    found[os.path.relpath(path, root).replace(os.sep, "/")] = path
        return found

    def files(self, inside: Iterable[str] = ()) -> list[str]:
        if not self.suffixes:
            return []
        skip = tuple(f + "/" for f in inside)
        listed = [*folder_paths.get_filename_list(self.folder), *self.demo_files()]
        return sorted(
            {name for name in listed if name.lower().endswith(self.suffixes) and not (skip and name.startswith(skip))}
        )

    def names(self) -> list[str]:
        """What the widget offers: folders first, then files."""
        folders = self.folders()
        return sorted(folders) + self.files(folders)

    def resolve(self, name: str) -> Optional[str]:
        """The full path of a listed name, or None."""
        folders = self.folders()
        if name in folders:
            return folders[name]
        if name in self.files(folders):
            return folder_paths.get_full_path(self.folder, name) or self.demo_files().get(name)
        return None

    def path(self, name: str) -> str:
        """The full path of a listed name; anything else is a ValueError saying what exists."""
        found = self.resolve(name)
        if found is None:
            raise ValueError(self.unknown_message(name))
        return found

    def unknown_message(self, name: str, available: Optional[list[str]] = None) -> str:
        available = self.names() if available is None else available
        shown = ", ".join(available[:10]) + (" ..." if len(available) > 10 else "")
        return (
            f"{self.input_name}: '{name}' is not a {self.what} in ComfyUI's models/{self.folder}. "
            f"Available: {shown or 'none'}. Put it there and refresh (press R in the editor)."
        )


def _is_diffusers_pipeline(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "model_index.json"))


SINGLE_FILE_SUFFIXES = (".safetensors", ".sft")
DIFFUSERS_MODELS = ModelFolder("diffusers", "model_name", (), _is_diffusers_pipeline, "diffusers model")
CHECKPOINTS = ModelFolder("checkpoints", "model_name", SINGLE_FILE_SUFFIXES, None, "checkpoint")


def model_names() -> list[str]:
    """What DSLoadModel offers: diffusers folders, then single-file checkpoints."""
    return DIFFUSERS_MODELS.names() + CHECKPOINTS.names()


def resolve_model_path(name: str) -> str:
    """The full path of a listed model (diffusers folder or checkpoint file)."""
    found = DIFFUSERS_MODELS.resolve(name) or CHECKPOINTS.resolve(name)
    if found is None:
        raise ValueError(unknown_model_message(name))
    return found


def unknown_model_message(name: str) -> str:
    available = model_names()
    shown = ", ".join(available[:10]) + (" ..." if len(available) > 10 else "")
    return (
        f"model_name: '{name}' is not a model in ComfyUI's models/checkpoints "
        f"(.safetensors) or models/diffusers (diffusers folders). "
        f"Available: {shown or 'none'}. Put the file there and refresh (press R in the editor)."
    )


def _comfy_dir(*parts: str) -> str:
    # `comfy` is a namespace package in some trees (no __file__), so locate it
    # from folder_paths, which always sits at the root of the ComfyUI tree.
    return os.path.join(os.path.dirname(os.path.abspath(folder_paths.__file__)), "comfy", *parts)


def tokenizer_dir() -> str:
    """The CLIP BPE tokenizer files that ComfyUI ships (used for single files)."""
    return _comfy_dir("sd1_tokenizer")


def t5_tokenizer_dir() -> str:
    """The T5 tokenizer that ComfyUI ships (FLUX.1 / SD3 single and split files)."""
    return _comfy_dir("text_encoders", "t5_tokenizer")


def tokenizer_dirs() -> dict[str, str]:
    """Both tokenizer folders, as the engine's DiT file loaders take them."""
    return {"clip": tokenizer_dir(), "t5": t5_tokenizer_dir()}


# ------------------------------------------------------------------- devices
def compute_device() -> torch.device:
    return model_management.get_torch_device()


def offload_device() -> torch.device:
    return model_management.unet_offload_device()


# ---------------------------------------------------------- model management
class _Holder(torch.nn.Module):
    """Wraps a diffusers/transformers module for ComfyUI's ModelPatcher.

    ModelPatcher writes a few attributes onto the model it manages (`device`
    among them), which diffusers' ModelMixin exposes as a read-only property;
    the holder takes those writes while the weights are moved in place, so the
    module inside the pack's bundles follows ComfyUI's loads and unloads.
    """

    def __init__(self, module: torch.nn.Module, device: torch.device):
        super().__init__()
        self.module = module
        self.device = device


HOLDER_SUFFIX = " (Diffusers Studio)"
_holder_classes: dict[str, type] = {}


def holder_for(module: torch.nn.Module, device: torch.device) -> _Holder:
    """A holder whose class is named after the module it wraps.

    ComfyUI logs the class name of what it loads ("Requested to load ...") and
    unloads; a plain `_Holder` told a reader nothing. The holder of a UNet is
    a `UNet2DConditionModel (Diffusers Studio)`, of a VAE an
    `AutoencoderKL (Diffusers Studio)`: the diffusers/transformers class, and
    that the pack loaded it (ComfyUI's own VAE class is also AutoencoderKL).
    One subclass per wrapped class, made once.
    """
    name = type(module).__name__ + HOLDER_SUFFIX
    holder_class = _holder_classes.get(name)
    if holder_class is None:
        holder_class = type(name, (_Holder,), {"__module__": __name__, "__qualname__": f"_Holder[{name}]"})
        _holder_classes[name] = holder_class
    return holder_class(module, device)


def patcher_for(module: torch.nn.Module, per_step: bool = False) -> comfy.model_patcher.ModelPatcher:
    """The ModelPatcher that registers `module` with ComfyUI's model management.

    It is stored on the module itself: the reference cycle dies with the
    module when ComfyUI drops its cached outputs (POST /free), and every
    bundle that shares the module shares its patcher. On registration the
    module's plain torch layers become comfy.ops layers, so that when the
    module does not fit in VRAM ComfyUI loads it partially and streams the
    rest, as it does its own models (`comfy_cast`). `per_step` (the UNet and
    what the sampler calls with it every step) picks comfy.ops layers without
    the per-layer interrupt check; the first registration decides.
    """
    patcher = module.__dict__.get("_ds_patcher")
    if patcher is None:
        current = next(module.parameters()).device
        size = comfy.model_management.module_size(module)
        comfy_cast.make_castable(module, per_step=per_step)
        patcher = comfy.model_patcher.ModelPatcher(
            holder_for(module, current), load_device=compute_device(), offload_device=offload_device(), size=size
        )
        comfy_cast.follow_partial_load(patcher)
        module.__dict__["_ds_patcher"] = patcher
    return patcher


def load_to_compute_device(modules: Iterable[torch.nn.Module], memory_required: int = 0,
                           per_step: bool = False) -> None:
    """Ask ComfyUI to make room for and load these modules on its device.

    `per_step`: the sampler calls them every step, after its interrupt check
    (`patcher_for`).
    """
    patchers = [patcher_for(m, per_step) for m in modules if m is not None]
    model_management.load_models_gpu(patchers, memory_required=memory_required)


def free_memory_bytes(device: Optional[torch.device] = None) -> int:
    """What ComfyUI counts as free on `device` (its compute device by default), in bytes."""
    return int(model_management.get_free_memory(device if device is not None else compute_device()))


def release_cached_memory() -> None:
    """Give the device allocator's cached blocks back (after an out-of-memory error)."""
    model_management.soft_empty_cache()


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


# -------------------------------------------------------- progress and cancel
def raise_if_interrupted() -> None:
    """ComfyUI's Cancel: raises its InterruptProcessingException at a step."""
    model_management.throw_exception_if_processing_interrupted()


def _latent_format(preview: str):
    """ComfyUI's latent format by class name (the family's LatentFormat.preview: "SD15", "SDXL", ...)."""
    import comfy.latent_formats as formats

    return getattr(formats, preview, formats.SD15)()


def step_reporter(total_steps: int, preview: str, device: torch.device) -> Callable[[int, int, torch.Tensor], None]:
    """A progress bar that advances every step and carries a latent preview.

    preview: the comfy.latent_formats class the previewer decodes with.
    """
    import latent_preview

    bar = comfy.utils.ProgressBar(total_steps)
    try:
        previewer = latent_preview.get_previewer(device, _latent_format(preview))
    except Exception:  # a preview is a nicety; never fail a run for it
        log.debug("latent previews unavailable", exc_info=True)
        previewer = None

    def report(step: int, total: int, x0: Optional[torch.Tensor]) -> None:
        preview = None
        if previewer is not None and x0 is not None:
            try:
                preview = previewer.decode_latent_to_preview_image("JPEG", x0[:1].float())
            except Exception:
                log.debug("latent preview failed", exc_info=True)
        bar.update_absolute(step + 1, total, preview)

    return report


def counter(total: int) -> Callable[[int, int], None]:
    """A progress bar for work counted in items (pictures, tiles): call it with (done, total)."""
    bar = comfy.utils.ProgressBar(total)

    def report(done: int, count: int) -> None:
        raise_if_interrupted()
        bar.update_absolute(done, count)

    return report


# ------------------------------------------------------------ upscale models
def upscale_with_model(upscale_model, image: torch.Tensor) -> torch.Tensor:
    """IMAGE enlarged by a ComfyUI UPSCALE_MODEL (ESRGAN & co., loaded by Load Upscale Model).

    ComfyUI's own Upscale Image (using Model) node does the work (its memory
    planning, tiling and out-of-memory retry), so the result is the same as
    wiring that node in front.
    """
    from comfy_extras.nodes_upscale_model import ImageUpscaleWithModel

    result = ImageUpscaleWithModel.execute(upscale_model, image)
    return result.result[0] if hasattr(result, "result") else result[0]
