"""Latent -> RGB preview factors per model family, and the projection that uses them.

The tables are data: each is a (latent channels x 3) matrix mapping one model-space latent pixel (VAE latent after
the family's shift and scale, as the sampler sees x0) to R, G, B in -1..1, plus an optional RGB bias. SD1/SDXL,
SD3, FLUX.1 and Qwen-Image (Wan 2.1) are the published ``latent_rgb_factors`` / ``latent_rgb_factors_bias`` of
ComfyUI's latent formats;
Z-Image decodes with the FLUX.1 VAE (ae.safetensors), so it uses FLUX.1's table.
"""
from __future__ import annotations

LATENT_RGB = {
    "sd1": ([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
             [-0.2120, -0.2616, -0.7177]], None),
    "sdxl": ([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
              [-0.3165, -0.2492, -0.2188]], [0.1084, -0.0175, -0.0011]),
    "sd3": ([[-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458],
             [0.0856, 0.0339, 0.0902], [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309],
             [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358], [-0.0194, 0.0020, 0.0669],
             [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
             [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293],
             [-0.1448, -0.1463, -0.1189]], [0.2394, 0.2135, 0.1925]),
    "flux": ([[-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433],
              [-0.0174, 0.0160, 0.0617], [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115],
              [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259], [-0.0245, 0.0250, 0.1180],
              [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
              [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499],
              [-0.1262, -0.0982, -0.0778]], [-0.0329, -0.0718, -0.0851]),
}
LATENT_RGB["zimage"] = LATENT_RGB["flux"]
#: Qwen-Image decodes with the Wan 2.1 VAE: ComfyUI's published Wan21 latent_rgb_factors / _bias (its QwenImage model
#: uses that latent format)
LATENT_RGB["qwen_image"] = ([[-0.1299, -0.1692, 0.2932], [0.0671, 0.0406, 0.0442], [0.3568, 0.2548, 0.1747],
                             [0.0372, 0.2344, 0.1420], [0.0313, 0.0189, -0.0328], [0.0296, -0.0956, -0.0665],
                             [-0.3477, -0.4059, -0.2925], [0.0166, 0.1902, 0.1975], [-0.0412, 0.0267, -0.1364],
                             [-0.1293, 0.0740, 0.1636], [0.0680, 0.3019, 0.1128], [0.0032, 0.0581, 0.0639],
                             [-0.1251, 0.0927, 0.1699], [0.0060, -0.0633, 0.0005], [0.3477, 0.2275, 0.2950],
                             [0.1984, 0.0913, 0.1861]], [-0.1835, -0.0868, -0.3360])


def latent_to_rgb(x0, arch: str = "sd1"):
    """PIL RGB image (latent resolution, w x h) of the first item of ``x0`` (B, C, h, w), model space, projected
    with ``arch``'s factors. Unknown arch: the table whose channel count matches, else SD1's."""
    import torch
    from PIL import Image

    lat = x0[0].float().cpu()
    if arch not in LATENT_RGB:
        arch = next((k for k, (f, _) in LATENT_RGB.items() if len(f) == lat.shape[0]), "sd1")
    factors, bias = LATENT_RGB[arch]
    fac = torch.tensor(factors, dtype=torch.float32)
    lat = lat[: fac.shape[0]]
    rgb = torch.einsum("chw,cr->hwr", lat, fac[: lat.shape[0]])
    if bias is not None:
        rgb = rgb + torch.tensor(bias)
    rgb = ((rgb + 1) / 2).clamp(0, 1)
    return Image.fromarray((rgb * 255).to(torch.uint8).numpy())
