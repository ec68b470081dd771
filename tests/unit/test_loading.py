"""Checkpoint loading: single files and diffusers folders, the cache, the errors.

Tiny SD1/SDXL models are exported the way real models are distributed (an LDM
single file, a diffusers folder) and must load back bit for bit with the same
architecture. Bad inputs must fail with a ModelLoadError naming the file.
"""
from __future__ import annotations

import gc

import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from diffusers_studio.nodes.engine import families, single_file
from diffusers_studio.nodes.engine.components import BASE, REFINER, SD1, SDXL
from diffusers_studio.nodes.engine.loading import (
    CacheKey,
    CheckpointCache,
    ModelLoadError,
    checkpoint_cache,
    load_checkpoint,
)
from ldm_export import (
    REFINER_CLIP_G,
    SD1_CLIP,
    SDXL_CLIP_G,
    SDXL_CLIP_L,
    clip_to_ldm,
    open_clip_to_ldm,
    save_diffusers_folder,
    save_sd1_single_file,
    save_sdxl_refiner_single_file,
    save_sdxl_single_file,
    unet_to_ldm,
    vae_to_ldm,
)
from tiny_models import (
    sdxl_refiner_pipeline,
    tiny_sd1_components,
    tiny_sdxl_components,
    tiny_sdxl_refiner_components,
    tokenizer_dir,
)

TOKENIZER_DIR = str(tokenizer_dir())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Tiny SD1 and SDXL models, each as a single file and as a diffusers folder."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    root = tmp_path_factory.mktemp("checkpoints")
    sd1 = tiny_sd1_components()
    sdxl = tiny_sdxl_components()
    return {
        SD1: {
            "components": sd1,
            "file": str(save_sd1_single_file(sd1, root / "tiny_sd1.safetensors")),
            "folder": str(
                save_diffusers_folder(
                    StableDiffusionPipeline(**sd1, requires_safety_checker=False), root / "tiny_sd1_diffusers"
                )
            ),
        },
        SDXL: {
            "components": sdxl,
            "file": str(save_sdxl_single_file(sdxl, root / "tiny_sdxl.safetensors")),
            "folder": str(save_diffusers_folder(StableDiffusionXLPipeline(**sdxl), root / "tiny_sdxl_diffusers")),
        },
    }


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    """A tiny SDXL refiner as sd_xl_refiner_1.0 ships: a single file and a diffusers folder."""
    root = tmp_path_factory.mktemp("refiner")
    components = tiny_sdxl_refiner_components()
    return {
        "components": components,
        "file": str(save_sdxl_refiner_single_file(components, root / "tiny_refiner.safetensors")),
        "folder": str(save_diffusers_folder(sdxl_refiner_pipeline(0, components), root / "tiny_refiner_diffusers")),
    }


@pytest.fixture(autouse=True)
def _empty_cache():
    checkpoint_cache.clear()
    yield
    checkpoint_cache.clear()


def _load(path, **kwargs):
    kwargs.setdefault("tokenizer_dir", TOKENIZER_DIR)
    return load_checkpoint(path, **kwargs)


# Bookkeeping that save_pretrained writes into a config, not architecture.
_BOOKKEEPING = {"dtype", "torch_dtype", "architectures", "transformers_version"}


def _config(module) -> dict:
    raw = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
    return {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in raw.items()
        if not k.startswith("_") and k not in _BOOKKEEPING
    }


def _assert_same_module(loaded, original, what, ignore_config=()):
    got, want = loaded.state_dict(), original.state_dict()
    assert set(got) == set(want), f"{what}: keys differ: {sorted(set(got) ^ set(want))[:5]}"
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, f"{what}: tensors differ: {different[:5]}"
    got_cfg, want_cfg = _config(loaded), _config(original)
    diff = {
        k: (got_cfg.get(k), want_cfg.get(k))
        for k in set(got_cfg) | set(want_cfg)
        if k not in ignore_config and got_cfg.get(k) != want_cfg.get(k)
    }
    assert not diff, f"{what}: config differs (loaded, original): {diff}"
    assert not loaded.training, f"{what} is not in eval mode"
    assert not any(p.requires_grad for p in loaded.parameters()), f"{what} is not frozen"


def _assert_round_trip(family, exported, loaded):
    model, text, vae = loaded
    components = exported[family]["components"]
    assert model.family == text.family == vae.family == family
    assert model.dtype == torch.float32
    _assert_same_module(model.unet, components["unet"], "unet")
    _assert_same_module(vae.vae, components["vae"], "vae")
    assert model.latent_scaling_factor == vae.scaling_factor == components["vae"].config.scaling_factor
    assert model.vae_scale_factor == vae.downscale == 8
    names = ["text_encoder"] + (["text_encoder_2"] if family == SDXL else [])
    assert len(text.text_encoders) == len(text.tokenizers) == len(names)
    for encoder, name in zip(text.text_encoders, names):
        _assert_same_module(encoder, components[name], name)
    for tokenizer in text.tokenizers:
        assert tokenizer.model_max_length == 77
    if family == SDXL:
        assert text.tokenizers[1].pad_token == "!"
        ids = text.tokenizers[1]("a cat", padding="max_length", max_length=77).input_ids
        assert ids == components["tokenizer_2"]("a cat", padding="max_length", max_length=77).input_ids
    sched = model.scheduler_config
    assert (sched["beta_start"], sched["beta_end"], sched["beta_schedule"], sched["steps_offset"]) == (
        0.00085,
        0.012,
        "scaled_linear",
        1,
    )


@pytest.mark.parametrize("family", [SD1, SDXL])
def test_single_file_round_trip(exported, family):
    loaded = _load(exported[family]["file"])
    _assert_round_trip(family, exported, loaded)
    assert loaded[0].name == os.path.basename(exported[family]["file"])
    assert loaded[0].scheduler_config == families.scheduler_config(family)


@pytest.mark.parametrize("family", [SD1, SDXL])
def test_diffusers_folder_round_trip(exported, family):
    loaded = _load(exported[family]["folder"])
    _assert_round_trip(family, exported, loaded)
    scheduler = exported[family]["components"]["scheduler"]
    assert loaded[0].scheduler_config["_class_name"] == type(scheduler).__name__
    assert loaded[0].scheduler_config["clip_sample"] is False


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_sdxl_refiner_round_trip(refiner, kind):
    model, text, vae = _load(refiner[kind])
    components = refiner["components"]
    assert (model.family, model.variant, text.variant, vae.variant) == (SDXL, REFINER, REFINER, REFINER)
    assert model.is_refiner and text.is_refiner
    _assert_same_module(model.unet, components["unet"], "unet")
    _assert_same_module(vae.vae, components["vae"], "vae")
    assert len(text.text_encoders) == len(text.tokenizers) == 1
    _assert_same_module(text.text_encoders[0], components["text_encoder_2"], "text_encoder_2")
    assert text.tokenizers[0].pad_token == "!" and text.tokenizers[0].model_max_length == 77
    assert model.unet.config.transformer_layers_per_block == 2  # one depth, as the real refiner's config
    assert model.latent_scaling_factor == vae.scaling_factor
    if kind == "file":
        assert model.scheduler_config == families.scheduler_config(SDXL)


def test_peek_family_reads_headers_only(refiner, exported, tmp_path):
    """The family of a file or folder without loading it (the A1111 routes ask it of refiner checkpoints)."""
    from diffusers_studio.nodes.engine.loading import peek_family

    for kind in ("file", "folder"):
        assert peek_family(exported[SD1][kind]) is families.get(SD1)
        assert peek_family(exported[SDXL][kind]) is families.get(SDXL)
        found = peek_family(refiner[kind])
        assert found is families.get(SDXL, REFINER) and found.aesthetic_score and len(found.text_encoders) == 1
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.safetensors"):
        peek_family(bad)


def test_sdxl_refiner_and_base_share_the_latent_space(refiner, exported):
    """The tiny refiner's VAE and bigG are the tiny base's, as the real ones are."""
    _, _, base_vae = _load(exported[SDXL]["file"])
    _, r_text, r_vae = _load(refiner["file"])
    base_text = _load(exported[SDXL]["file"])[1]
    assert all(torch.equal(a, b) for a, b in zip(base_vae.vae.state_dict().values(), r_vae.vae.state_dict().values()))
    assert all(
        torch.equal(a, b)
        for a, b in zip(base_text.text_encoders[1].state_dict().values(), r_text.text_encoders[0].state_dict().values())
    )


def test_sdxl_single_file_unet_computes_like_the_original(exported):
    """Heads and norm groups are not in the shapes: the family rule must get them right."""
    components = exported[SDXL]["components"]
    model = _load(exported[SDXL]["file"])[0]
    torch.manual_seed(0)
    sample, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 64)
    added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        want = components["unet"](sample, 10, text, added_cond_kwargs=added).sample
        got = model.unet(sample, 10, text, added_cond_kwargs=added).sample
    # Same weights and architecture; CPU kernels may still round differently
    # with other memory layouts. A wrong head count or norm grouping is O(1).
    assert (got - want).abs().max().item() <= 1e-5


def test_float16_load(exported):
    model, text, vae = _load(exported[SD1]["file"], dtype="float16")
    assert model.dtype == torch.float16
    for module in (model.unet, vae.vae, text.text_encoders[0]):
        assert {p.dtype for p in module.parameters()} == {torch.float16}
    want = exported[SD1]["components"]["unet"].conv_in.weight.half()
    assert torch.equal(model.unet.conv_in.weight, want)


def test_float16_sdxl_keeps_its_vae_float32(exported):
    """The SDXL VAE overflows in float16 (its config says force_upcast)."""
    model, _, vae = _load(exported[SDXL]["file"], dtype="float16")
    assert model.dtype == torch.float16
    assert {p.dtype for p in model.unet.parameters()} == {torch.float16}
    assert {p.dtype for p in vae.vae.parameters()} == {torch.float32}


def test_unknown_dtype_is_refused(exported):
    with pytest.raises(ValueError, match="dtype"):
        _load(exported[SD1]["file"], dtype="float64")


# ----------------------------------------------------------------------- cache


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_second_load_returns_cached_objects(exported, kind):
    path = exported[SD1][kind]
    first = _load(path)
    second = _load(path)
    assert all(a is b for a, b in zip(first, second))
    assert second[0].unet is first[0].unet

    fresh = _load(path, use_cache=False)
    assert fresh[0].unet is not first[0].unet

    assert checkpoint_cache.drop(path) == 1
    assert _load(path)[0].unet is not first[0].unet


def test_cache_keys_on_dtype_and_file_identity(exported, tmp_path):
    path = tmp_path / "copy.safetensors"
    shutil.copy(exported[SD1]["file"], path)
    first = _load(str(path))
    assert _load(str(path), dtype="float16")[0].unet is not first[0].unet

    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    changed = _load(str(path))
    assert changed[0].unet is not first[0].unet
    assert _load(str(path))[0].unet is changed[0].unet


def test_cache_holds_weak_references_and_drops_stale_files():
    """The cache never keeps weights alive by itself (ComfyUI's caches own them)."""

    class Value:
        pass

    cache = CheckpointCache()
    keys = [CacheKey(f"/m/{i}", (i,), "float32", "cpu", "/t") for i in range(2)]
    held = (Value(), Value(), Value())
    cache.put(keys[0], held)
    cache.put(keys[1], (Value(), Value(), Value()))  # nobody holds these
    gc.collect()
    assert cache.get(keys[0]) == held and cache.get(keys[1]) is None and len(cache) == 1
    cache.put(keys[0]._replace(fingerprint=(9,)), held)  # the file changed: the stale entry goes
    assert cache.get(keys[0]) is None
    cache.clear()
    assert len(cache) == 0


# ----------------------------------------------------------------------- errors


def _expect_error(path, *words):
    with pytest.raises(ModelLoadError) as info:
        _load(str(path))
    message = str(info.value)
    assert os.path.basename(str(path)) in message
    for word in words:
        assert word.lower() in message.lower(), message
    return message


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nowhere.safetensors", "not found")


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"this is not a safetensors file\n" * 8)
    _expect_error(path, "safetensors")


def test_random_tensor_dict(tmp_path):
    path = tmp_path / "random.safetensors"
    save_file({"weight": torch.randn(3, 3), "bias": torch.randn(3)}, str(path))
    _expect_error(path, "not a Stable Diffusion checkpoint")


@pytest.mark.parametrize(
    "name, keys, words",
    [
        (
            "sd2.safetensors",
            ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.model.token_embedding.weight"],
            ["Stable Diffusion 2"],
        ),
        (
            "flux.safetensors",
            ["model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale", "vae.decoder.conv_in.weight"],
            ["Flux"],
        ),
        (
            "sd3.safetensors",
            ["model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight"],
            ["Stable Diffusion 3"],
        ),
        ("lora.safetensors", ["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], ["LoRA"]),
        ("vae.safetensors", ["encoder.conv_in.weight", "decoder.conv_out.weight"], ["VAE"]),
    ],
)
def test_other_model_kinds_are_named(tmp_path, name, keys, words):
    path = tmp_path / name
    save_file({k: torch.zeros(2, 2) for k in keys}, str(path))
    message = _expect_error(path, *words)
    assert "Supported" in message


def test_unet_only_file_names_what_is_missing(tmp_path, exported):
    path = tmp_path / "unet_only.safetensors"
    save_file({k: v.contiguous() for k, v in unet_to_ldm(exported[SD1]["components"]["unet"]).items()}, str(path))
    _expect_error(path, "VAE", "text encoder")


def test_ckpt_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "old_model.ckpt"
    path.write_bytes(b"not read: pickle files are refused by name")
    _expect_error(path, "pickle", ".safetensors")


def test_missing_tokenizer_files_are_named(exported, tmp_path):
    with pytest.raises(ModelLoadError, match="vocab.json"):
        load_checkpoint(exported[SD1]["file"], tokenizer_dir=str(tmp_path), use_cache=False)


def test_folder_without_model_index(tmp_path):
    folder = tmp_path / "not_a_pipeline"
    (folder / "unet").mkdir(parents=True)
    _expect_error(folder, "model_index.json")


def test_folder_with_missing_component(tmp_path, exported):
    folder = tmp_path / "broken_sd1"
    shutil.copytree(exported[SD1]["folder"], folder)
    shutil.rmtree(folder / "text_encoder")
    _expect_error(folder, "text_encoder")


def test_refiner_file_without_unet_names_what_is_missing(tmp_path, refiner):
    components = refiner["components"]
    path = tmp_path / "refiner_no_unet.safetensors"
    tensors = {**vae_to_ldm(components["vae"]), **open_clip_to_ldm(components["text_encoder_2"], REFINER_CLIP_G)}
    tensors["model.diffusion_model.label_emb.0.0.weight"] = torch.zeros(4, 72)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    _expect_error(path, "refiner", "UNet")


def test_refiner_text_encoder_with_a_base_unet_is_refused(tmp_path, refiner, exported):
    """bigG as embedder 0 but SDXL base's UNet (6 time ids, 64-wide text): neither model."""
    path = tmp_path / "mixed.safetensors"
    tensors = {
        **unet_to_ldm(exported[SDXL]["components"]["unet"]),
        **vae_to_ldm(refiner["components"]["vae"]),
        **open_clip_to_ldm(refiner["components"]["text_encoder_2"], REFINER_CLIP_G),
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    _expect_error(path, "5 time ids", "refiner")


def test_refiner_folder_with_a_base_unet_is_refused(tmp_path, refiner, exported):
    folder = tmp_path / "refiner_with_base_unet"
    shutil.copytree(refiner["folder"], folder)
    shutil.rmtree(folder / "unet")
    shutil.copytree(os.path.join(exported[SDXL]["folder"], "unet"), folder / "unet")
    _expect_error(folder, "refiner", "cross_attention_dim 64")


def test_sdxl_folder_without_any_text_encoder_is_refused(tmp_path, refiner):
    import json

    folder = tmp_path / "no_text"
    shutil.copytree(refiner["folder"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder_2"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    _expect_error(folder, "text_encoder_2", "refiner")


def test_refiner_folder_with_missing_text_encoder_2(tmp_path, refiner):
    folder = tmp_path / "refiner_missing_te2"
    shutil.copytree(refiner["folder"], folder)
    shutil.rmtree(folder / "text_encoder_2")
    _expect_error(folder, "text_encoder_2", "Stable Diffusion XL refiner")


def test_folder_with_missing_weights(tmp_path, exported):
    folder = tmp_path / "no_weights_sd1"
    shutil.copytree(exported[SD1]["folder"], folder)
    for weights in (folder / "vae").glob("*.safetensors"):
        weights.unlink()
    _expect_error(folder, "vae")


# ------------------------------------------------- full-size layout (no data)


@pytest.mark.parametrize("family", [SD1, SDXL])
def test_full_size_configs_are_inferred_from_shapes(family):
    """The real SD1.5 / SDXL key layouts give back the real configs.

    The models are built on the meta device and exported to LDM names and
    shapes only, so no gigabytes are allocated.
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights():
        unet = UNet2DConditionModel(**families.bundled_config(family, "unet"))
        vae = AutoencoderKL(**families.bundled_config(family, "vae"))
        clip = CLIPTextModel(CLIPTextConfig(**families.bundled_config(family, "text_encoder")))
        clip_g = None
        if family == SDXL:
            clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**families.bundled_config(family, "text_encoder_2")))
    tensors = {**unet_to_ldm(unet), **vae_to_ldm(vae)}
    tensors.update(clip_to_ldm(clip, SDXL_CLIP_L if family == SDXL else SD1_CLIP))
    if clip_g is not None:
        tensors.update(open_clip_to_ldm(clip_g))
    header = single_file.Header(path="real.safetensors", shapes={k: tuple(v.shape) for k, v in tensors.items()})
    assert single_file.detect_family(header) == family

    pooled = None
    if clip_g is not None:
        g = single_file.infer_open_clip_config(header.with_prefix(SDXL_CLIP_G), family, "real")
        assert (g["hidden_size"], g["num_attention_heads"], g["num_hidden_layers"], g["projection_dim"]) == (
            1280,
            20,
            32,
            1280,
        )
        pooled = g["projection_dim"]
    u = single_file.infer_unet_config(header.with_prefix(single_file.UNET_PREFIX), family, "real", pooled)
    assert u == {k: v for k, v in _config(unet).items() if k in u}
    v = single_file.infer_vae_config(header.with_prefix(single_file.VAE_PREFIX), family, "real")
    assert v == {k: val for k, val in _config(vae).items() if k in v}
    assert v["scaling_factor"] == (0.18215 if family == SD1 else 0.13025)
    if family == SDXL:
        assert u["attention_head_dim"] == [5, 10, 20] and u["transformer_layers_per_block"] == [1, 2, 10]
        assert u["addition_time_embed_dim"] == 256
    else:
        assert u["attention_head_dim"] == 8 and u["cross_attention_dim"] == 768


def test_full_size_refiner_config_is_inferred_from_shapes():
    """sd_xl_refiner_1.0's key layout gives back its published UNet config."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with init_empty_weights():
        unet = UNet2DConditionModel(**families.bundled_config(SDXL, "unet", REFINER))
        vae = AutoencoderKL(**families.bundled_config(SDXL, "vae", REFINER))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**families.bundled_config(SDXL, "text_encoder_2", REFINER)))
    tensors = {**unet_to_ldm(unet), **vae_to_ldm(vae), **open_clip_to_ldm(clip_g, REFINER_CLIP_G)}
    header = single_file.Header(path="sd_xl_refiner_1.0.safetensors", shapes={k: tuple(v.shape) for k, v in tensors.items()})
    assert single_file.detect_model(header) == (SDXL, REFINER)
    assert single_file.detect_family(header) == SDXL

    g = single_file.infer_open_clip_config(header.with_prefix(REFINER_CLIP_G), SDXL, "real")
    assert (g["hidden_size"], g["num_hidden_layers"], g["projection_dim"]) == (1280, 32, 1280)
    u = single_file.infer_unet_config(
        header.with_prefix(single_file.UNET_PREFIX), SDXL, "real", g["projection_dim"], variant=REFINER
    )
    assert u == {k: v for k, v in _config(unet).items() if k in u}
    assert u["block_out_channels"] == [384, 768, 1536, 1536]
    assert u["attention_head_dim"] == [6, 12, 24, 24] and u["transformer_layers_per_block"] == 4
    assert u["cross_attention_dim"] == 1280 and u["projection_class_embeddings_input_dim"] == 2560
    assert u["addition_time_embed_dim"] == 256
    assert u["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    v = single_file.infer_vae_config(header.with_prefix(single_file.VAE_PREFIX), SDXL, "real")
    assert v["scaling_factor"] == 0.13025


def test_refiner_variant_is_only_for_sdxl():
    assert families.bundled_config(SDXL, "vae", REFINER) == families.bundled_config(SDXL, "vae", BASE)
    with pytest.raises(ValueError, match="variant"):
        families.bundled_config(SD1, "unet", REFINER)
