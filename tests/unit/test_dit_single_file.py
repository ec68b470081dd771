"""FLUX.1 / SD3 single-file and split-file loading.

Tiny models are exported the way the real files are distributed (BFL /
Stability originals, ComfyUI-prefixed, diffusers-named, all-in-one, fp8) and
must load back through the same path real weights take: every tensor equal
to the original's, the same config, the same forward output, the same
component classes as the pipelines' from_pretrained gives. Wrong combinations
must fail with a ModelLoadError (a ValueError) naming the file and the fix.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from diffusers_studio.nodes.engine import dit_detect, single_file_dit
from diffusers_studio.nodes.engine.families import ModelLoadError
from dit_export import (
    save_ae,
    save_all_in_one,
    save_clip,
    save_t5,
    save_transformer,
    transformer_original,
)
from dit_tiny import tiny_flux_components, tiny_sd3_components, tokenizer_dirs
from ldm_export import save_sd1_single_file
from tiny_models import tiny_sd1_components

F32 = torch.float32
FP8_REL = 2.0 ** -4  # float8_e4m3fn keeps 3 mantissa bits: half an ulp is 1/16 relative


@pytest.fixture(scope="module")
def flux():
    return tiny_flux_components("dev")


@pytest.fixture(scope="module")
def sd3():
    return tiny_sd3_components("sd35_medium")


@pytest.fixture(scope="module")
def split_files(tmp_path_factory, flux, sd3):
    root = tmp_path_factory.mktemp("dit_split")
    return {
        "clip_l": save_clip(flux["text_encoder"], root / "clip_l.safetensors"),
        "t5": save_t5(flux["text_encoder_2"], root / "t5xxl_fp16.safetensors"),
        "ae": save_ae(flux["vae"], root / "ae.safetensors"),
        "sd3_clip_l": save_clip(sd3["text_encoder"], root / "sd3_clip_l.safetensors"),
        "clip_g": save_clip(sd3["text_encoder_2"], root / "clip_g.safetensors"),
        "sd3_t5": save_t5(sd3["text_encoder_3"], root / "sd3_t5xxl.safetensors"),
        "sd3_vae": save_ae(sd3["vae"], root / "sd3_vae.safetensors"),
    }


def _assert_same_module(loaded, original, *, exact=True):
    assert type(loaded) is type(original)
    want = original.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        if exact:
            assert torch.equal(got[key], value), key
        else:
            torch.testing.assert_close(got[key], value, rtol=FP8_REL, atol=1e-3, msg=key)


def _assert_same_config(loaded, original):
    want = {k: v for k, v in original.config.items() if not k.startswith("_")}
    got = {k: v for k, v in loaded.config.items() if not k.startswith("_")}
    norm = lambda d: {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}  # noqa: E731
    assert norm(got) == norm(want)


def _flux_forward(transformer, seed=0):
    torch.manual_seed(seed)
    cfg = transformer.config
    hidden = torch.randn(1, 16, cfg.in_channels)
    text = torch.randn(1, 7, cfg.joint_attention_dim)
    kwargs = dict(
        hidden_states=hidden, encoder_hidden_states=text,
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim), timestep=torch.tensor([0.5]),
        img_ids=torch.randn(16, 3), txt_ids=torch.zeros(7, 3), return_dict=False,
    )
    if cfg.guidance_embeds:
        kwargs["guidance"] = torch.tensor([3.5])
    with torch.no_grad():
        return transformer(**kwargs)[0]


def _sd3_forward(transformer, seed=0):
    torch.manual_seed(seed)
    cfg = transformer.config
    with torch.no_grad():
        return transformer(
            hidden_states=torch.randn(1, cfg.in_channels, 8, 8),
            encoder_hidden_states=torch.randn(1, 7, cfg.joint_attention_dim),
            pooled_projections=torch.randn(1, cfg.pooled_projection_dim), timestep=torch.tensor([500.0]),
            return_dict=False,
        )[0]


# ------------------------------------------------------------ detection


@pytest.mark.parametrize("variant", ["dev", "schnell", "fill"])
@pytest.mark.parametrize("layout", ["original", "comfyui", "diffusers"])
def test_flux_variant_and_layout_are_detected(tmp_path, variant, layout):
    transformer = tiny_flux_components(variant)["transformer"]
    path = save_transformer(transformer, tmp_path / "t.safetensors", layout)
    info = single_file_dit.detect(path)
    assert (info.family, info.variant, info.layout) == (dit_detect.FLUX, variant, layout)
    assert info.depth == 1 and info.registry_variant == variant


@pytest.mark.parametrize("variant", [dit_detect.SD3_MEDIUM, dit_detect.SD35_MEDIUM, dit_detect.SD35_LARGE])
@pytest.mark.parametrize("layout", ["original", "comfyui", "diffusers"])
def test_sd3_variant_and_layout_are_detected(tmp_path, variant, layout):
    transformer = tiny_sd3_components(variant)["transformer"]
    path = save_transformer(transformer, tmp_path / "t.safetensors", layout)
    info = single_file_dit.detect(path)
    assert (info.family, info.variant, info.layout, info.depth) == (dit_detect.SD3, variant, layout, 2)
    assert info.registry_variant == "base"


def test_full_size_flux_and_sd3_key_layouts_are_told_apart():
    """Real shapes (headers only, no weights): the published variants."""
    def header(shapes):
        return dit_detect.Header(path="real.safetensors", shapes=shapes)

    flux = {"img_in.weight": (3072, 64), "final_layer.linear.weight": (64, 3072),
            "double_blocks.0.img_attn.qkv.weight": (9216, 3072), "guidance_in.in_layer.weight": (3072, 256)}
    assert dit_detect.detect_transformer(header(flux)).variant == dit_detect.DEV
    fill = dict(flux, **{"img_in.weight": (3072, 384)})
    assert dit_detect.detect_transformer(header(fill)).variant == dit_detect.FILL
    depth = dict(flux, **{"img_in.weight": (3072, 128)})
    assert dit_detect.detect_transformer(header(depth)).variant == dit_detect.CONTROL
    schnell = {k: v for k, v in flux.items() if not k.startswith("guidance_in")}
    assert dit_detect.detect_transformer(header(schnell)).variant == dit_detect.SCHNELL

    sd3 = {f"model.diffusion_model.joint_blocks.{i}.x_block.attn.qkv.weight": (4608, 1536) for i in range(24)}
    info = dit_detect.detect_transformer(header(sd3))
    assert (info.variant, info.layout, info.depth) == (dit_detect.SD3_MEDIUM, dit_detect.COMFYUI, 24)
    large = {f"joint_blocks.{i}.x_block.attn.qkv.weight": (7296, 2432) for i in range(38)}
    large.update({f"joint_blocks.{i}.x_block.attn.ln_q.weight": (64,) for i in range(38)})
    info = dit_detect.detect_transformer(header(large))
    assert (info.variant, info.depth) == (dit_detect.SD35_LARGE, 38)
    medium = dict(large)
    medium["joint_blocks.0.x_block.attn2.qkv.weight"] = (4608, 1536)
    assert dit_detect.detect_transformer(header(medium)).variant == dit_detect.SD35_MEDIUM


# ------------------------------------------------------------ Flux transformer round trips


@pytest.mark.parametrize("layout", ["original", "comfyui", "diffusers"])
@pytest.mark.parametrize("variant", ["dev", "schnell", "fill"])
def test_flux_split_files_load_back_exactly(tmp_path, split_files, layout, variant):
    from diffusers import FluxPipeline

    original = tiny_flux_components(variant)
    path = save_transformer(original["transformer"], tmp_path / "flux1.safetensors", layout)
    base = tiny_flux_components("dev")
    components = single_file_dit.load_dit_split(
        path, [split_files["t5"], split_files["clip_l"]], split_files["ae"], dtype=F32, tokenizer_dirs=tokenizer_dirs()
    )
    assert set(components) == set(FluxPipeline._get_signature_keys(FluxPipeline)[0]) | {
        "image_encoder", "feature_extractor"
    }
    _assert_same_module(components["transformer"], original["transformer"])
    _assert_same_config(components["transformer"], original["transformer"])
    torch.testing.assert_close(
        _flux_forward(components["transformer"]), _flux_forward(original["transformer"]), rtol=0, atol=1e-5
    )
    for name in ("vae", "text_encoder", "text_encoder_2"):
        _assert_same_module(components[name], base[name])
    _assert_same_config(components["vae"], base["vae"])
    assert dict(components["scheduler"].config) == dict(original["scheduler"].config)
    for name in ("tokenizer", "tokenizer_2"):
        assert type(components[name]) is type(original[name])
        assert components[name]("a cat").input_ids == original[name]("a cat").input_ids
    FluxPipeline(**components)  # the components fit the pipeline's signature


def test_flux_encoder_order_does_not_matter(split_files, tmp_path, flux):
    path = save_transformer(flux["transformer"], tmp_path / "f.safetensors")
    roles = single_file_dit.classify_encoders([split_files["clip_l"], split_files["t5"]])
    assert {r: str(e.path) for r, e in roles.items()} == {"clip_l": str(split_files["clip_l"]), "t5xxl": str(split_files["t5"])}
    components = single_file_dit.load_dit_split(
        path, [split_files["clip_l"], split_files["t5"]], split_files["ae"], dtype=F32, tokenizer_dirs=tokenizer_dirs()
    )
    _assert_same_module(components["text_encoder_2"], flux["text_encoder_2"])


def test_full_pipeline_output_matches(tmp_path, split_files, flux):
    """One FLUX.1 dev step through FluxPipeline: loaded components == the originals."""
    from diffusers import FluxPipeline

    path = save_transformer(flux["transformer"], tmp_path / "f.safetensors", "comfyui")
    loaded = single_file_dit.load_dit_split(
        path, [split_files["clip_l"], split_files["t5"]], split_files["ae"], dtype=F32, tokenizer_dirs=tokenizer_dirs()
    )
    kwargs = dict(prompt="a cat", height=32, width=32, num_inference_steps=1, guidance_scale=3.5,
                  max_sequence_length=16, output_type="pt")
    want = FluxPipeline(**flux)(**kwargs, generator=torch.Generator().manual_seed(0)).images
    got = FluxPipeline(**loaded)(**kwargs, generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# ------------------------------------------------------------ SD3


@pytest.mark.parametrize("variant", [dit_detect.SD3_MEDIUM, dit_detect.SD35_MEDIUM, dit_detect.SD35_LARGE])
def test_sd3_all_in_one_loads_back_exactly(tmp_path, variant):
    from diffusers import StableDiffusion3Pipeline

    original = tiny_sd3_components(variant)
    path = save_all_in_one(original, tmp_path / "sd3.safetensors")
    components = single_file_dit.load_dit_checkpoint(path, dtype=F32, tokenizer_dirs=tokenizer_dirs())
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        _assert_same_module(components[name], original[name])
    for name in ("transformer", "vae"):
        _assert_same_config(components[name], original[name])
    torch.testing.assert_close(
        _sd3_forward(components["transformer"]), _sd3_forward(original["transformer"]), rtol=0, atol=1e-5
    )
    assert components["tokenizer_2"].pad_token == "!"
    assert dict(components["scheduler"].config) == dict(original["scheduler"].config)
    StableDiffusion3Pipeline(**components)


def test_sd3_split_files_and_optional_t5(tmp_path, split_files, sd3):
    path = save_transformer(sd3["transformer"], tmp_path / "sd3.5_medium.safetensors")
    components = single_file_dit.load_dit_split(
        path, [split_files["clip_g"], split_files["sd3_clip_l"]], split_files["sd3_vae"],
        dtype=F32, tokenizer_dirs=tokenizer_dirs(),
    )
    assert components["text_encoder_3"] is None and components["tokenizer_3"] is None
    _assert_same_module(components["text_encoder"], sd3["text_encoder"])
    _assert_same_module(components["text_encoder_2"], sd3["text_encoder_2"])
    _assert_same_module(components["transformer"], sd3["transformer"])


def test_flux_all_in_one_loads_back_exactly(tmp_path, flux):
    path = save_all_in_one(flux, tmp_path / "flux1-dev-aio.safetensors")
    components = single_file_dit.load_dit_checkpoint(path, dtype=F32, tokenizer_dirs=tokenizer_dirs())
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        _assert_same_module(components[name], flux[name])


# ------------------------------------------------------------ fp8


@pytest.mark.parametrize("fp8", ["fp8", "scaled", "weight_scale"])
def test_flux_fp8_transformer_loads_the_files_values(tmp_path, split_files, flux, fp8):
    """Scaled fp8 is dequantized on load; plain fp8 stays float8 (test_float8_storage.py), same values."""
    from dit_export import quantize_fp8

    path = save_transformer(flux["transformer"], tmp_path / f"flux1-dev-{fp8}.safetensors", "comfyui", fp8=fp8)
    components = single_file_dit.load_dit_split(
        path, [split_files["clip_l"], split_files["t5"]], split_files["ae"], dtype=F32, tokenizer_dirs=tokenizer_dirs()
    )
    loaded = components["transformer"]
    kept = {p.dtype for p in loaded.parameters()} - {F32}
    assert kept == ({torch.float8_e4m3fn} if fp8 == "fp8" else set())
    state = {k: v.to(F32) for k, v in loaded.state_dict().items()}
    for key, value in flux["transformer"].state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=FP8_REL, atol=1e-3, msg=key)
    # Exactly the file's values times their scale: nothing lost beyond the fp8 rounding itself.
    scale_name = "weight_scale" if fp8 == "weight_scale" else "scale_weight"
    stored = quantize_fp8(transformer_original(flux["transformer"]), scaled=fp8 != "fp8", scale_name=scale_name)
    key = "double_blocks.0.img_mlp.0.weight"
    scale = stored.get(f"double_blocks.0.img_mlp.0.{scale_name}", torch.tensor(1.0))
    assert torch.equal(state["transformer_blocks.0.ff.net.0.proj.weight"], stored[key].float() * scale)


def test_t5_fp8_and_bfloat16_load(tmp_path, split_files, flux):
    t5_fp8 = save_t5(flux["text_encoder_2"], tmp_path / "t5xxl_fp8_e4m3fn.safetensors", fp8="fp8")
    path = save_transformer(flux["transformer"], tmp_path / "f.safetensors")
    components = single_file_dit.load_dit_split(
        path, [split_files["clip_l"], t5_fp8], split_files["ae"], dtype=torch.bfloat16, tokenizer_dirs=tokenizer_dirs()
    )
    t5 = components["text_encoder_2"]
    assert t5.dtype == torch.bfloat16
    want = flux["text_encoder_2"].state_dict()
    for key, value in t5.state_dict().items():
        torch.testing.assert_close(value.float(), want[key], rtol=FP8_REL, atol=1e-3, msg=key)


def test_float16_keeps_t5_feed_forward_output_in_float32(tmp_path, split_files, flux):
    path = save_transformer(flux["transformer"], tmp_path / "f.safetensors")
    components = single_file_dit.load_dit_split(
        path, [split_files["clip_l"], split_files["t5"]], split_files["ae"], dtype=torch.float16,
        tokenizer_dirs=tokenizer_dirs(),
    )
    t5 = components["text_encoder_2"]
    assert t5.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    assert t5.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float16


# ------------------------------------------------------------ wrong combinations


def test_sd3_clip_g_with_flux_is_refused(tmp_path, split_files, flux):
    path = save_transformer(flux["transformer"], tmp_path / "flux1-dev.safetensors")
    with pytest.raises(ValueError, match=r"flux1-dev\.safetensors.*'clip_g\.safetensors'.*SD3.*Remove clip_g"):
        single_file_dit.load_dit_split(
            path, [split_files["sd3_clip_l"], split_files["clip_g"], split_files["t5"]], split_files["ae"],
            dtype=F32, tokenizer_dirs=tokenizer_dirs(),
        )


def test_flux_without_t5_is_refused(tmp_path, split_files, flux):
    path = save_transformer(flux["transformer"], tmp_path / "flux1-dev.safetensors")
    with pytest.raises(ModelLoadError, match=r"flux1-dev\.safetensors.*needs a T5-XXL.*t5xxl_fp16\.safetensors"):
        single_file_dit.load_dit_split(
            path, [split_files["clip_l"]], split_files["ae"], dtype=F32, tokenizer_dirs=tokenizer_dirs()
        )


def test_sd1_checkpoint_as_flux_transformer_is_refused(tmp_path, split_files):
    path = save_sd1_single_file(tiny_sd1_components(), tmp_path / "v1-5.safetensors")
    with pytest.raises(ModelLoadError, match=r"'v1-5\.safetensors' is not a FLUX\.1 or SD3 transformer.*SD1\.x/SDXL"):
        single_file_dit.load_dit_split(
            path, [split_files["clip_l"], split_files["t5"]], split_files["ae"], dtype=F32, tokenizer_dirs=tokenizer_dirs()
        )


def test_unknown_layout_is_refused(tmp_path, split_files):
    path = tmp_path / "mystery.safetensors"
    save_file({"foo.bar.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModelLoadError, match=r"'mystery\.safetensors' is not a FLUX\.1 or SD3 transformer.*foo\.bar"):
        single_file_dit.detect(path)
    with pytest.raises(ModelLoadError, match=r"'mystery\.safetensors' is neither a CLIP.*nor a T5"):
        single_file_dit.classify_encoders([path])


def test_sd3_without_clip_g_and_wrong_vae_are_refused(tmp_path, split_files, sd3, flux):
    path = save_transformer(sd3["transformer"], tmp_path / "sd3.5_medium.safetensors")
    with pytest.raises(ModelLoadError, match=r"sd3\.5_medium\.safetensors.*clip_g is missing.*clip_g\.safetensors"):
        single_file_dit.load_dit_split(
            path, [split_files["sd3_clip_l"], split_files["sd3_t5"]], split_files["sd3_vae"],
            dtype=F32, tokenizer_dirs=tokenizer_dirs(),
        )
    with pytest.raises(ModelLoadError, match=r"VAE file 't5xxl_fp16\.safetensors' is not an autoencoder.*ae\.safetensors"):
        single_file_dit.load_dit_split(
            path, [split_files["sd3_clip_l"], split_files["clip_g"]], split_files["t5"],
            dtype=F32, tokenizer_dirs=tokenizer_dirs(),
        )


def test_transformer_only_file_as_checkpoint_is_refused(tmp_path, flux):
    path = save_transformer(flux["transformer"], tmp_path / "flux1-dev.safetensors", "comfyui")
    with pytest.raises(ModelLoadError, match=r"flux1-dev\.safetensors.*no text encoders and no VAE.*split loader"):
        single_file_dit.load_dit_checkpoint(path, dtype=F32, tokenizer_dirs=tokenizer_dirs())


def test_missing_t5_tokenizer_is_named(tmp_path, split_files, flux):
    path = save_transformer(flux["transformer"], tmp_path / "f.safetensors")
    dirs = dict(tokenizer_dirs(), t5=str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"T5 tokenizer.*no tokenizer\.json.*t5_tokenizer"):
        single_file_dit.load_dit_split(
            path, [split_files["clip_l"], split_files["t5"]], split_files["ae"], dtype=F32, tokenizer_dirs=dirs
        )


# ------------------------------------------------------------ full-size configs


def _meta(factory):
    from accelerate import init_empty_weights

    with init_empty_weights():
        return factory()


@pytest.mark.parametrize("folder", ["flux_dev", "flux_schnell", "flux_fill", "sd3_medium", "sd35_medium", "sd35_large"])
def test_full_size_transformers_are_detected_and_configured_from_shapes(folder):
    """The real architectures, built on the meta device from the shipped configs and exported to the
    original names, are detected as their variant and give back exactly the shipped config."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from diffusers_studio.nodes.engine import dit_configs, dit_convert

    shipped = dit_configs.shipped(folder, "transformer")
    cls = FluxTransformer2DModel if folder.startswith("flux") else SD3Transformer2DModel
    model = _meta(lambda: cls(**shipped))
    original = transformer_original(model)
    header = dit_detect.Header(path="real.safetensors", shapes={k: tuple(v.shape) for k, v in original.items()})
    info = dit_detect.detect_transformer(header)
    assert info.config_folder == folder
    converted = dit_convert.transformer_to_diffusers(info, original)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    config = dit_configs.transformer_config(info, converted, "real.safetensors")
    assert config == shipped


def test_full_size_encoders_and_vae_configs_come_back_from_shapes():
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from diffusers_studio.nodes.engine import dit_configs
    from ldm_export import hf_text_state_dict, vae_to_ldm

    def shapes(state):
        return {k: tuple(v.shape) for k, v in state.items()}

    for family in ("flux", "sd3"):
        shipped = dit_configs.shipped(family, "vae")
        vae = _meta(lambda: AutoencoderKL(**shipped))
        ldm = {k[len("first_stage_model."):]: v for k, v in vae_to_ldm(vae).items()}
        assert dit_configs.vae_config(family, shapes(ldm), "ae") == shipped
    for family, component in (("flux", "text_encoder"), ("sd3", "text_encoder"), ("sd3", "text_encoder_2")):
        shipped = dit_configs.shipped(family, component)
        clip = _meta(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**shipped)))
        assert dit_configs.clip_config(family, component, shapes(hf_text_state_dict(clip)), "clip") == shipped
    for family, component in (("flux", "text_encoder_2"), ("sd3", "text_encoder_3")):
        shipped = dit_configs.shipped(family, component)
        t5 = _meta(lambda: T5EncoderModel(T5Config(**shipped)))
        assert dit_configs.t5_config(family, component, shapes(t5.state_dict()), "t5") == shipped


# ------------------------------------------------------------ GGUF


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_gguf_transformer_stays_quantized_and_computes_like_the_original(tmp_path, split_files, flux, sd3, family):
    pytest.importorskip("gguf")
    import gguf
    from diffusers.quantizers.gguf.utils import GGUFParameter

    from dit_export import save_gguf

    original = flux if family == "flux" else sd3
    path = save_gguf(original["transformer"], tmp_path / f"{family}-Q8_0.gguf")
    info = single_file_dit.detect(path)
    assert info.family == family and info.layout == dit_detect.ORIGINAL
    if family == "flux":
        encoders, vae = [split_files["clip_l"], split_files["t5"]], split_files["ae"]
    else:
        encoders, vae = [split_files["sd3_clip_l"], split_files["clip_g"], split_files["sd3_t5"]], split_files["sd3_vae"]
    components = single_file_dit.load_dit_split(path, encoders, vae, dtype=F32, tokenizer_dirs=tokenizer_dirs())
    transformer = components["transformer"]
    assert type(transformer) is type(original["transformer"])
    _assert_same_config(transformer, original["transformer"])
    quantized = [p for p in transformer.parameters() if isinstance(p, GGUFParameter)]
    assert quantized and all(p.quant_type == gguf.GGMLQuantizationType.Q8_0 for p in quantized)
    forward = _flux_forward if family == "flux" else _sd3_forward
    want = forward(original["transformer"])
    # Q8_0 keeps 8 bits per weight with a scale per 32: measured ~6e-4 of the output's range here.
    torch.testing.assert_close(forward(transformer), want, rtol=0, atol=0.005 * want.abs().max().item())


def test_gguf_without_the_package_names_the_fix(tmp_path, monkeypatch, flux):
    import builtins

    path = tmp_path / "flux1-dev-Q4_K_S.gguf"
    path.write_bytes(b"GGUF")
    real_import = builtins.__import__

    def no_gguf(name, *args, **kwargs):
        if name == "gguf":
            raise ImportError("no gguf")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gguf)
    with pytest.raises(ModelLoadError, match=r"flux1-dev-Q4_K_S\.gguf.*pip install gguf"):
        single_file_dit.detect(path)


def test_sd3_scaled_fp8_all_in_one(tmp_path):
    """ComfyUI's sd3.5_*_fp8_scaled layout: the marker and scales under model.diffusion_model."""
    original = tiny_sd3_components(dit_detect.SD35_LARGE)
    path = save_all_in_one(original, tmp_path / "sd3.5_large_fp8_scaled.safetensors", fp8="scaled")
    components = single_file_dit.load_dit_checkpoint(path, dtype=F32, tokenizer_dirs=tokenizer_dirs())
    _assert_same_module(components["transformer"], original["transformer"], exact=False)
    for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        _assert_same_module(components[name], original[name])


def test_sd3_clip_l_without_projection_gets_the_identity(tmp_path, split_files, sd3, flux):
    """A clip_l.safetensors saved for Flux (no text_projection) serves SD3 with the identity projection."""
    path = save_transformer(sd3["transformer"], tmp_path / "sd3.safetensors")
    clip_l = save_clip(flux["text_encoder"], tmp_path / "clip_l.safetensors")
    components = single_file_dit.load_dit_split(
        path, [clip_l, split_files["clip_g"]], split_files["sd3_vae"], dtype=F32, tokenizer_dirs=tokenizer_dirs()
    )
    assert torch.equal(components["text_encoder"].text_projection.weight, torch.eye(32))


def test_vae_of_another_latent_space_is_refused(tmp_path, split_files, flux):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        block_out_channels=[8, 16, 32, 32], down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=2, norm_num_groups=8, layers_per_block=1,
    )
    ae = save_ae(vae, tmp_path / "vae-ft-mse.safetensors")
    path = save_transformer(flux["transformer"], tmp_path / "flux1-dev.safetensors")
    with pytest.raises(ModelLoadError, match=r"flux1-dev\.safetensors.*VAE has 2 latent channels.*works on 4.*ae\.safetensors"):
        single_file_dit.load_dit_split(
            path, [split_files["clip_l"], split_files["t5"]], ae, dtype=F32, tokenizer_dirs=tokenizer_dirs()
        )


def test_gguf_as_all_in_one_checkpoint_points_to_the_split_loader(tmp_path):
    path = tmp_path / "flux1-dev-Q8_0.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match=r"flux1-dev-Q8_0\.gguf.*transformer only.*split loader"):
        single_file_dit.load_dit_checkpoint(path, dtype=F32, tokenizer_dirs=tokenizer_dirs())


def test_diffusers_layout_vae_file_loads(tmp_path, split_files, flux):
    """A vae folder's diffusion_pytorch_model.safetensors saved as flux_vae.safetensors."""
    vae_file = tmp_path / "flux_vae.safetensors"
    save_file({k: v.contiguous() for k, v in flux["vae"].state_dict().items()}, str(vae_file))
    path = save_transformer(flux["transformer"], tmp_path / "f.safetensors")
    components = single_file_dit.load_dit_split(
        path, [split_files["clip_l"], split_files["t5"]], vae_file, dtype=F32, tokenizer_dirs=tokenizer_dirs()
    )
    _assert_same_module(components["vae"], flux["vae"])
    _assert_same_config(components["vae"], flux["vae"])


def test_gguf_text_encoder_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "t5-v1_1-xxl-encoder-Q8_0.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match=r"t5-v1_1-xxl-encoder-Q8_0\.gguf.*GGUF.*t5xxl_fp8_e4m3fn\.safetensors"):
        single_file_dit.classify_encoders([path])
