"""Images out of ComfyUI's folders into A1111's answers, with the infotext attached."""
from __future__ import annotations

import base64
import io

from PIL import Image
from PIL.PngImagePlugin import PngInfo

EXIF_IFD = 0x8769
USER_COMMENT = 0x9286


def png_with_parameters(image: Image.Image, parameters: str | None, keep_text: bool = False) -> bytes:
    info = PngInfo()
    if keep_text:
        for key, value in (getattr(image, "text", None) or {}).items():
            if key != "parameters" and isinstance(value, str):
                info.add_text(key, value)
    if parameters is not None:
        info.add_text("parameters", parameters)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def encode(image: Image.Image, parameters: str | None, fmt: str, quality: int = 80) -> str:
    """base64 of the image in A1111's samples_format, the infotext in PNG text or EXIF UserComment."""
    fmt = fmt.lower()
    if fmt == "png":
        return base64.b64encode(png_with_parameters(image, parameters)).decode("ascii")
    image = image.convert("RGB")
    exif = Image.Exif()
    if parameters is not None:
        exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"UNICODE\0" + parameters.encode("utf-16-be")
    out = io.BytesIO()
    image.save(out, format="WEBP" if fmt == "webp" else "JPEG", quality=quality, exif=exif.tobytes())
    return base64.b64encode(out.getvalue()).decode("ascii")


def read_and_tag(path: str, parameters: str | None, rewrite: bool, fmt: str, quality: int) -> str:
    """Load a ComfyUI output file; when `rewrite`, add the parameters chunk to the file itself."""
    with Image.open(path) as image:
        image.load()
        if rewrite and parameters is not None:
            data = png_with_parameters(image, parameters, keep_text=True)
            tmp = path + ".tmp"
            with open(tmp, "wb") as handle:
                handle.write(data)
            import os

            os.replace(tmp, path)
        return encode(image, parameters, fmt, quality)
